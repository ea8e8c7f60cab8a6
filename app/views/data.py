"""Data & scoring: pick a dataset and model, score it in the background, follow the
jobs, and choose the active run."""

import time
from pathlib import Path

import streamlit as st

from infosft.analysis.preview import preview
from infosft.analysis.runs import list_runs, scoring_summary
from infosft.analysis.store import Run
from infosft.app import jobs, state, workspace
from infosft.app.render import duration, scoring_text

SOURCES = ("Bundled sample", "Upload a file", "Local path", "Hugging Face dataset")
MODELS = ("Embedded default (SmolLM2-135M-Instruct)", "Local path", "Hugging Face id")
FIELDS = {"pair": ("prompt", "response", "input"), "messages": ("messages",), "text": ("text",)}


def pick_source() -> tuple[str | None, str]:
    """The dataset source the user chose (None until there is one) and its split."""
    kind = st.radio("Dataset", SOURCES, horizontal=True, key="data_kind")
    split = "train"
    if kind == "Bundled sample":
        return str(workspace.SAMPLE_DATA), split
    if kind == "Upload a file":
        up = st.file_uploader("JSONL, JSON, CSV or Parquet", key="data_upload",
                              type=["jsonl", "ndjson", "json", "csv", "parquet"])
        return (str(workspace.save_upload(up.name, up.getvalue())) if up is not None
                else None), split
    if kind == "Local path":
        path = st.text_input("File or dataset directory", key="data_path").strip()
        # absolute here, so the preview and the job (run elsewhere) read one file
        return (workspace.local_path(path) or None), split
    name = st.text_input("Dataset name (e.g. openai/gsm8k)", key="data_hf").strip()
    split = st.text_input("Split", "train", key="data_split").strip() or "train"
    if name and not st.toggle("Load a preview (needs a reachable hub)", key="data_hf_go"):
        return None, split
    return (name or None), split


def mapping_editor(columns: list[str], detected_kind: str | None,
                   detected: dict[str, str]) -> dict[str, str] | None:
    """Editable field mapping; None keeps the automatic detection."""
    kinds = ["auto"] + list(FIELDS)
    kind = st.selectbox("Format", kinds, key="data_format",
                        help="auto: detected from the column names")
    if kind == "auto":
        return None
    mapping = {}
    cols = st.columns(len(FIELDS[kind]))
    for col, name in zip(cols, FIELDS[kind]):
        options = (["(none)"] if name == "input" else []) + columns
        default = detected.get(name) if detected_kind == kind else None
        value = col.selectbox(name, options, key=f"data_field_{kind}_{name}",
                              index=options.index(default) if default in options else 0)
        if value != "(none)":
            mapping[name] = value
    return mapping


# few entries: each holds only the first rows, but of as many files as there are entries
@st.cache_data(max_entries=4, show_spinner="Reading the first rows...")
def cached_preview(source: str, mtime: float, split: str, fields: tuple | None):
    return preview(source, split=split, fields=dict(fields) if fields else None)


def dataset_section() -> tuple[str | None, str, dict | None, bool]:
    """Source, split, field mapping and whether the preview rows fit it."""
    source, split = pick_source()
    if not source:
        return None, split, None, False
    p = Path(source)
    mtime = p.stat().st_mtime if p.exists() else 0.0
    first = cached_preview(source, mtime, split, None)
    if not first.columns:  # too large to preview: the reason, no rows
        st.error(first.problems[0])
        return source, split, None, False
    fields = mapping_editor(first.columns, first.kind, first.fields)
    pv = cached_preview(source, mtime, split, tuple(sorted(fields.items())) if fields else None)
    st.caption(f"First rows of `{pv.source}`")
    st.dataframe(pv.rows, hide_index=True, key="data_preview")
    if pv.kind:
        st.info(f"Format: **{pv.kind}** · fields: "
                + ", ".join(f"{k} ← `{v}`" for k, v in pv.fields.items()))
    for problem in pv.problems[:5]:
        st.error(problem)
    return source, split, fields, pv.kind is not None and not pv.problems


def model_section() -> dict:
    kind = st.radio("Model", MODELS, horizontal=True, key="model_kind")
    model = None
    if kind == "Local path":
        model = workspace.local_path(st.text_input("Model directory", key="model_path").strip()) \
            or None
    elif kind == "Hugging Face id":
        model = st.text_input("Model id (e.g. HuggingFaceTB/SmolLM2-360M-Instruct)",
                              key="model_id").strip() or None
    a, b = st.columns(2)
    max_length = a.number_input("Max length (tokens)", 16, 32768, 2048, step=256, key="max_len")
    limit = b.number_input("Only the first N rows (0 = all)", 0, 10_000_000, 0, key="limit")
    return {"model": model, "max_length": int(max_length), "limit": int(limit) or None,
            "needs_model": kind != MODELS[0]}


def scoring_form() -> None:
    st.subheader("Score a dataset")
    source, split, fields, fits = dataset_section()
    opts = model_section()
    default = f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    name = st.text_input("Run name (a folder in the workspace's runs/)", default, key="run_name")
    ready = bool(source) and fits and not (opts["needs_model"] and not opts["model"])
    if st.button("Start scoring", type="primary", disabled=not ready, key="score_go"):
        job = jobs.launch_score(name, source, model=opts["model"], max_length=opts["max_length"],
                                fields=fields, limit=opts["limit"], split=split)
        st.success(f"Started job {job.id}: scoring into `{job.run_dir}`")


@st.cache_data(max_entries=64, show_spinner=False)
def _summary(run_dir: str, mtime: float) -> dict:
    return scoring_summary(run_dir)


def _mtime(run_dir: str) -> float:
    try:
        return Run(run_dir).meta_path.stat().st_mtime
    except OSError:
        return 0.0


@state.fragment(run_every=2)
def jobs_panel() -> None:
    """Refreshes itself every 2 s without rerunning the rest of the page."""
    st.subheader("Jobs")
    all_jobs = jobs.list_jobs()
    if not all_jobs:
        st.caption("No jobs yet.")
    for job in all_jobs:
        stt = jobs.status(job)
        with st.container(border=True):
            a, b = st.columns([5, 1])
            a.markdown(f"**{job.name}** · {stt['state']} · `{job.run_dir}`")
            if stt["state"] in ("starting", "running"):
                label = (f"{stt['done']:,} / {stt['total']:,} tokens · ETA {duration(stt['eta_s'])}"
                         if stt["total"] else f"{stt['stage']}... ({stt['elapsed_s']:.0f}s)")
                if stt["total"] and stt["stage"] != "scoring":
                    label = f"{stt['stage']} · {label}"  # finishing: the bar stays full
                a.progress(stt["fraction"], text=label)
                # callbacks run before the rerun, so the new state shows at once
                b.button("Cancel", key=f"cancel_{job.id}", on_click=jobs.cancel, args=(job,))
            elif stt["state"] == "failed":
                a.error(f"Scoring failed: {stt['message']}")
                with a.expander("Log"):
                    st.code(stt["log"] or "(empty)")
            elif stt["state"] == "complete":
                a.caption(scoring_text(_summary(job.run_dir, _mtime(job.run_dir))))
                if b.button("Make active", key=f"activate_{job.id}"):
                    state.set_active_run(job.run_dir)
                    st.rerun()  # the whole app: the sidebar shows the active run


def runs_section() -> None:
    st.subheader("Scored runs")
    runs = list_runs([workspace.SAMPLE_RUN], [workspace.subdir(workspace.RUNS)])
    st.dataframe(runs, hide_index=True, key="runs_table")
    complete = runs.filter(runs["status"] == "complete")["path"].to_list()
    ss = st.session_state
    current = ss["run_path"]
    options = complete if current in complete else [current, *complete]
    if ss.get("_run_pick_for") != current:  # made active elsewhere (a job card, a page)
        ss["run_pick"], ss["_run_pick_for"] = current, current
    pick = st.selectbox("Active run", options, key="run_pick")
    if pick != current and st.button("Make active", key="run_activate"):
        state.set_active_run(pick)
        st.rerun()


def body() -> None:
    st.title("Data & scoring")
    st.caption(f"Workspace: `{workspace.workspace_dir()}`")
    state.guard(runs_section)
    state.guard(jobs_panel)
    state.guard(scoring_form)


state.guard(body)
