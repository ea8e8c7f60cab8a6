"""Train: launch a weighted fine-tune in the background (knobs prefilled from Tune, data
from the active scored run), follow it live, stop or resume it, compare past runs."""

import time
from pathlib import Path

import streamlit as st

from infosft.analysis.export import read_export_meta
from infosft.analysis.training import list_train_runs, metrics_frame, q_drift, tail_lines
from infosft.app import charts, jobs, knobs, state, sweep_view, workspace
from infosft.app.render import SCHEME_LABELS, duration, knobs_text
from infosft.bundled import bundled_source
from infosft.train_config import FULL_LR, LORA_LR, field_default
from infosft.train_status import ACTIVE_STATES, FINAL, LOG
from infosft.weights import needed_fields

SAVED = "_train_inputs"  # the form's other values, kept while the page is not shown


# --- the form ----------------------------------------------------------------------------

def run_defaults() -> dict:
    """Data, model, max length, field mapping and template of the active scored run, so
    training sees the tokens that were scored; ``{}`` without a usable active run."""
    try:
        run = state.active_run()
        meta = run.meta()
    except state.USER_ERRORS:
        return {}
    cfg = meta.get("config") or {}
    data = (meta.get("dataset") or {}).get("source") or cfg.get("source") or ""
    data = bundled_source(data)  # the sample run records its source relative to the bundle
    return {"run": str(run.path), "data": data, "model": cfg.get("model") or "",
            "max_length": int(meta.get("max_length") or cfg.get("max_length") or 1024),
            "fields": cfg.get("fields"), "no_template": cfg.get("use_template") is False,
            "split": cfg.get("split") or "train"}


def input_defaults() -> dict:
    """Widget key -> first value of the form's inputs (the trainer's own defaults)."""
    return {"train_mode": "online", "train_data": "", "train_model": "", "train_lora": True,
            "train_lr": LORA_LR, "train_by": "epochs", "train_epochs": 1.0,
            "train_max_steps": 100, "train_batch": field_default("batch_size"),
            "train_accum": field_default("grad_accum"),
            "train_max_len": field_default("max_length"),
            "train_eval_split": float(field_default("eval_split")),
            "train_log_every": field_default("logging_steps"), "train_eval_every": 0,
            "train_name": f"train-{time.strftime('%Y%m%d-%H%M%S')}"}


def restore_inputs(defaults: dict) -> None:
    """Seed the inputs: what the user typed last time (Streamlit drops widget values when
    a page is left), else defaults; a newly active scored run brings its data, model and
    max length."""
    ss = st.session_state
    saved = ss.setdefault(SAVED, {})
    if defaults and ss.get("_train_defaults_of") != defaults["run"]:
        ss["_train_defaults_of"] = defaults["run"]
        fresh = {"train_data": defaults["data"], "train_model": defaults["model"],
                 "train_max_len": defaults["max_length"]}
        saved.update(fresh)
        ss.update(fresh)  # before the widgets exist, so they show it
    for key, value in (input_defaults() | saved).items():
        ss.setdefault(key, value)


def remember_inputs() -> None:
    ss = st.session_state
    ss[SAVED].update({k: ss[k] for k in input_defaults() if k in ss})


def lr_follows_lora() -> None:
    """Callback: switching LoRA on/off swaps in that setting's usual learning rate."""
    ss = st.session_state
    ss["train_lr"] = LORA_LR if ss["train_lora"] else FULL_LR


def exports() -> list[str]:
    """Weighted datasets in the workspace's exports/ (newest first)."""
    found = [p for p in workspace.subdir(workspace.EXPORTS).iterdir()
             if p.suffix in (".parquet", ".jsonl") and p.is_file()]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def data_inputs(defaults: dict) -> dict | None:
    """Mode, data and scheme: online trains on raw records with the form's knobs; static
    on an export's frozen weights (its scheme and knobs). None when nothing to train on."""
    mode = st.radio("Weights", ("online", "static"), horizontal=True, key="train_mode",
                    help="online: q from the model being trained, every step (the papers' "
                    "method); static: the per-token weights of an exported dataset")
    if mode == "static":
        files = exports()
        if not files:
            st.warning("No exported dataset yet: export one on the Export page first.")
            return None
        data = st.selectbox("Exported dataset", files, key="train_export",
                            format_func=lambda p: Path(p).name)
        meta = read_export_meta(data)
        # the export records C and its equivalent P; the trainer takes one of them
        export_knobs = {k: v for k, v in (meta.get("knobs") or {}).items() if k != "P"}
        st.caption("Weights frozen from the export: "
                   + knobs_text(meta["scheme"], export_knobs))
        return {"data": data, "mode": mode, "scheme": meta["scheme"], "knobs": export_knobs}
    data = st.text_input("Training data (file, dataset directory or hub name)",
                         key="train_data").strip()
    if defaults.get("fields") or defaults.get("no_template"):
        st.caption(f"As scored: fields {defaults.get('fields') or 'auto'}, chat template "
                   f"{'off' if defaults.get('no_template') else 'on'}")
    # The session's one set of knobs (what the sidebar, Tune and Export show): moving a
    # knob here moves it there too, so no page trains or exports knobs another page hid.
    s = state.settings()
    with st.expander(f"Scheme: {knobs_text(s.scheme, s.knobs())}", expanded=False):
        knobs.knob_widgets("settings", "train")
    s = state.settings()
    extra = {"fields": defaults.get("fields"), "no_template": defaults.get("no_template"),
             "split": defaults.get("split")} if data == defaults.get("data") else {}
    if "logp_ref" in needed_fields(s.scheme):  # excess: the reference runs beside the model
        extra["reference"] = st.text_input(
            "Reference model (local path or hub id)", key="train_reference",
            help=f"{SCHEME_LABELS.get(s.scheme)} compares each token's log-prob under the model "
            "being trained with this model's (same vocabulary); it runs without gradient "
            "on every batch").strip() or None
    return {"data": data, "mode": mode, "scheme": s.scheme, "knobs": s.knobs(), **extra}


def optimizer_inputs() -> dict:
    """Model, LoRA, learning rate, length of training, batch shape, eval split."""
    model = st.text_input("Model (local path or hub id; blank = embedded default)",
                          key="train_model").strip()
    lora = st.toggle("LoRA adapter (off: full fine-tune)", key="train_lora",
                     on_change=lr_follows_lora)
    a, b = st.columns(2)
    lr = a.number_input("Learning rate", 1e-8, 1.0, format="%.2e", step=1e-5, key="train_lr")
    by = b.radio("Train for", ("epochs", "steps"), horizontal=True, key="train_by")
    if by == "epochs":
        length = {"epochs": float(a.number_input("Epochs", 0.01, 1000.0, step=0.5,
                                                 key="train_epochs"))}
    else:
        length = {"max_steps": int(a.number_input("Max steps", 1, 10_000_000,
                                                  key="train_max_steps"))}
    batch = int(b.number_input("Batch size", 1, 4096, key="train_batch"))
    accum = int(a.number_input("Gradient accumulation", 1, 4096, key="train_accum"))
    max_len = int(b.number_input("Max length (tokens)", 2, 131072, step=256,
                                 key="train_max_len"))
    eval_split = a.number_input("Eval split (held out; 0 = none)", 0.0, 0.5, step=0.01,
                                key="train_eval_split")
    log_every = int(b.number_input("Log every N steps", 1, 100_000, key="train_log_every"))
    eval_every = int(a.number_input("Evaluate every N steps (0 = only at the end)", 0,
                                    1_000_000, key="train_eval_every",
                                    help="the eval loss (plain NLL on the eval split) during "
                                    "training, not only once it ends"))
    return {"model": model or None, "lora": lora, "lr": float(lr), **length,
            "batch_size": batch, "grad_accum": accum, "max_length": max_len,
            "eval_split": float(eval_split), "logging_steps": log_every,
            "eval_steps": eval_every or None}


def launch_form() -> None:
    """The new-run form; Launch starts ``infosft train`` as a background job."""
    st.subheader("New training run")
    defaults = run_defaults()
    restore_inputs(defaults)
    data = data_inputs(defaults)
    opts = optimizer_inputs()
    remember_inputs()
    what = st.radio("Launch", ("one run", "a sweep"), horizontal=True, key="train_what",
                    help="a sweep: a grid of schemes and knobs, each trained with the "
                    "settings above and evaluated, to compare on the Evaluate page")
    if what == "a sweep":
        sweep_view.form(data, opts)
        return
    name = st.text_input("Run name (a folder in the workspace's trainings/)", key="train_name")
    remember_inputs()
    if not st.button("Launch", type="primary", key="train_go", disabled=data is None):
        return
    if not data["data"]:
        st.error("Choose the training data first.")
        return
    try:
        job = jobs.launch_train(name, data.pop("data"), **data, **opts)
    except state.USER_ERRORS as e:
        st.error(state.error_line(e))
        return
    st.session_state["train_pick"] = job.run_dir
    st.success(f"Started job {job.id}: training into `{job.run_dir}`")


# --- one run, live --------------------------------------------------------------------

def pick_run(paths: list[str]) -> str | None:
    """The run to follow: the one just launched, else the newest."""
    ss = st.session_state
    pick = ss.get("train_pick")
    if pick and pick not in paths and jobs.train_job(pick) is not None:
        paths = [pick, *paths]  # launched; the trainer makes its folder soon
    elif pick and pick not in paths:
        del ss["train_pick"]  # its folder is gone
    if not paths:
        st.caption("No training runs yet.")
        return None
    return st.selectbox("Run", paths, key="train_pick", format_func=lambda p: Path(p).name)


def progress(stt: dict) -> None:
    """Progress bar with step / total, epoch and ETA."""
    if stt["total_steps"]:
        epoch = f" · epoch {stt['epoch']:.2f}" if stt.get("epoch") is not None else ""
        label = (f"step {stt['step'] or 0:,} / {stt['total_steps']:,}{epoch} · "
                 f"ETA {duration(stt['eta_s'])}")
    else:
        label = f"loading data and model... ({duration(stt.get('elapsed_s') or 0)})"
    st.progress(stt["fraction"], text=label)


def controls(run_dir: str, stt: dict) -> None:
    """Stop while active; Resume when the run left a checkpoint; the error line."""
    state_ = stt["state"]
    if state_ in ACTIVE_STATES:
        progress(stt)
        if state_ == "stopping":
            st.info(f"Stopping after step {(stt['step'] or 0) + 1}: the trainer finishes it "
                    "and saves a checkpoint, then Resume continues from there.")
        elif st.button("Stop", key="train_stop", help="SIGTERM: saves a checkpoint, resumable"):
            jobs.stop_train(run_dir)
            st.info(f"Stopping after step {(stt['step'] or 0) + 1}: the trainer finishes it "
                    "and saves a checkpoint first.")
        return
    if state_ == "failed":
        st.error(f"Training failed: {stt['message']}")
    elif state_ == "stopped":
        st.info(f"Stopped at step {stt['step'] or 0} of {stt['total_steps'] or '?'}.")
    if stt.get("resumable") and st.button("Resume", key="train_resume", type="primary",
                                          help=f"from {stt.get('last_checkpoint')}"):
        job = jobs.resume_train(run_dir)
        st.success(f"Resumed as job {job.id}")


def final_model(run_dir: str, stt: dict) -> None:
    """Where the final model is and how to load it."""
    final = stt.get("final_model") or str(Path(run_dir) / FINAL)
    st.success(f"Finished. Final model: `{final}`")
    lora = (Path(final) / "adapter_config.json").exists()
    code = ("from infosft.models import load_model\n"
            f'model, tok, info = load_model("{final}")\n\n')
    code += ("# or plain transformers + peft\nfrom peft import AutoPeftModelForCausalLM\n"
             "from transformers import AutoTokenizer\n"
             f'model = AutoPeftModelForCausalLM.from_pretrained("{final}")\n'
             if lora else "# or plain transformers\nfrom transformers import "
             "AutoModelForCausalLM, AutoTokenizer\n"
             f'model = AutoModelForCausalLM.from_pretrained("{final}")\n')
    code += f'tok = AutoTokenizer.from_pretrained("{final}")'
    st.code(code, language="python")
    if st.button("Evaluate this run", key="train_evaluate",
                 help="What it learned (held-out task) and forgot (prior-capability set)"):
        evaluate_run(run_dir)


def evaluate_run(run_dir: str) -> None:
    """Start an evaluation job with the Evaluate page's defaults (unless the run has a
    report already) and open the Evaluate page on it."""
    from infosft.analysis.evaluate import read_report

    try:
        if (read_report(run_dir) or {}).get("status") != "complete":
            jobs.launch_eval([run_dir])
    except state.USER_ERRORS as e:
        st.error(state.error_line(e))
        return
    st.session_state["eval_runs"] = [run_dir]
    st.switch_page("views/evaluate.py")


def curves(run_dir: str) -> None:
    """Last-value cards, the loss and mean-weight curves."""
    m = metrics_frame([run_dir])
    if m.is_empty():
        st.caption("No metrics logged yet.")
        return
    last = {c: m[c].drop_nulls() for c in ("loss", "eval_loss", "mean_weight", "tokens_per_s")}
    labels = {"loss": "Loss", "eval_loss": "Eval loss", "mean_weight": "Mean weight",
              "tokens_per_s": "Tokens/s"}
    for col, (c, s) in zip(st.columns(4), last.items()):
        col.metric(labels[c], f"{s[-1]:.4g}" if len(s) else "–")
    st.plotly_chart(charts.loss_curve(m), key="train_loss_chart")
    st.plotly_chart(charts.mean_weight_curve(m), key="train_weight_chart")
    if m["learning_rate"].drop_nulls().len() or m["grad_norm"].drop_nulls().len():
        st.plotly_chart(charts.optimizer_curve(m), key="train_optimizer_chart")
    drift = q_drift(run_dir)
    if not drift.is_empty():  # runs logged before the histogram have none
        st.plotly_chart(charts.q_drift_heatmap(drift), key="train_drift_chart")
        st.plotly_chart(charts.band_weight_curve(m), key="train_band_chart")


@state.fragment(run_every=2)
def live_panel(run_dir: str) -> None:
    """Refreshes itself every 2 s without rerunning the rest of the page."""
    stt = jobs.train_status(run_dir)
    st.markdown(f"**{Path(run_dir).name}** · {stt['state']} · `{run_dir}`")
    controls(run_dir, stt)
    if stt["state"] == "finished":
        final_model(run_dir, stt)
    curves(run_dir)
    log = tail_lines(Path(run_dir) / LOG, 30) or stt.get("log") or ""
    with st.expander("Log (last lines)"):
        st.code(log or "(empty)")
    # when a run ends, refresh the whole page once so the runs table catches up
    seen = st.session_state.setdefault("_train_seen", {})
    was, seen[run_dir] = seen.get(run_dir), stt["state"]
    if was in ACTIVE_STATES and stt["state"] not in ACTIVE_STATES:
        st.rerun()


# --- all runs --------------------------------------------------------------------------

def with_live_states(runs):
    """A resumed run's status file says ``stopped`` until its new process writes one: the
    rows of runs with a live training job take :func:`app.jobs.train_status`'s state,
    which knows (queued, stopping, or finished while the process exits)."""
    live = {str(Path(j.run_dir).resolve()) for j in jobs.list_jobs(limit=50, kind="train")
            if jobs.alive(j)}
    if not live or runs.is_empty():
        return runs
    import polars as pl

    states = [jobs.train_status(p)["state"] if str(Path(p).resolve()) in live else s
              for p, s in zip(runs["path"], runs["state"])]
    return runs.with_columns(pl.Series("state", states, dtype=pl.String))


COMPARE = {"eval_loss": "eval loss (plain NLL: comparable across schemes)",
           "loss": "training loss (each run's own weighted loss)",
           "weight_share_medium": "share of the weight on medium q",
           "weight_share_low": "on low q", "weight_share_high": "on high q"}


def follow_new_runs(logged: list[str]) -> None:
    """The comparison's selection: the first three runs at first, then each run that
    logs its first loss while the page is open joins it (a widget's default applies
    only once, so a new run would otherwise be offered but never drawn); runs that are
    gone leave it, and what the user removed stays removed."""
    ss = st.session_state
    # the widget's own key is dropped while the page is not shown: keep a copy
    chosen = ss["train_compare"] if "train_compare" in ss else ss.get("_train_compare_kept")
    known = ss.get("_train_compare_known", set())
    if chosen is None:
        picked = logged[:3]
    else:
        picked = [p for p in chosen if p in logged]
        picked += [p for p in logged if p not in known and p not in picked]
    ss["train_compare"] = ss["_train_compare_kept"] = picked
    ss["_train_compare_known"] = set(logged)


@state.fragment(run_every=3)
def runs_section() -> None:
    """The table of runs and a comparison of their curves; refreshes itself, so a run
    launched, resumed or finished meanwhile shows as it is."""
    st.subheader("Training runs")
    runs = with_live_states(list_train_runs(workspace.subdir(workspace.TRAININGS)))
    if runs.is_empty():
        st.caption(f"None yet in `{workspace.subdir(workspace.TRAININGS)}`.")
        return
    st.dataframe(runs.drop("path", "step", "total_steps", "final_model"), hide_index=True,
                 key="train_runs_table")
    logged = runs.filter(runs["final_loss"].is_not_null())["path"].to_list()
    if not logged:
        return
    follow_new_runs(logged)
    picked = st.multiselect("Compare runs", logged, key="train_compare",
                            format_func=lambda p: Path(p).name)
    column = st.radio("Curve", tuple(COMPARE), horizontal=True, key="train_compare_y",
                      format_func=COMPARE.get)
    if not picked:
        return
    m = metrics_frame(picked)
    if m[column].drop_nulls().is_empty():  # no empty axes: say why there is no curve
        st.caption(f"No {COMPARE[column].split(' (')[0]} logged for these runs"
                   + (" (they had no eval split)" if column == "eval_loss" else "") + ".")
        return
    st.plotly_chart(charts.loss_comparison(m, column), key="train_compare_chart")


def body() -> None:
    st.title("Train")
    st.caption(f"Runs go to `{workspace.subdir(workspace.TRAININGS)}`")
    runs = list_train_runs(workspace.subdir(workspace.TRAININGS))
    left, right = st.columns([2, 3])
    with left:
        state.guard(launch_form)
    with right:
        st.subheader("Run")
        run_dir = pick_run(runs["path"].to_list())
        if run_dir:
            live_panel(run_dir)
    runs_section()
    sweep_view.panel()


state.guard(body)
