"""Evaluate: what each fine-tune learned (held-out task) and forgot (prior-capability
set). Launch evaluations as background jobs, compare runs in a table and on the
learned-vs-forgot plot, and see which tokens moved in any example."""

from pathlib import Path

import polars as pl
import streamlit as st

from infosft.analysis import evaluate as ev
from infosft.analysis.delta import example_delta, example_deltas, token_movers, top_movers
from infosft.analysis.store import Run
from infosft.analysis.sweep import find_sweeps, read_sweep_report, report_frame
from infosft.analysis.training import find_train_runs
from infosft.app import charts, jobs, state, sweep_jobs, workspace
from infosft.app.render import duration
from infosft.app.render_delta import delta_html, delta_legend

SETS = {"task": "Held-out task", "prior": "Prior capability"}


def run_dirs() -> list[Path]:
    """Training runs of the workspace plus the ones added by path (or by the Train page's
    "evaluate this run", which puts them in ``eval_runs``)."""
    extra = [Path(p) for p in st.session_state.get("eval_paths", [])]
    extra += [Path(p) for p in st.session_state.get("eval_runs", [])]
    return list(dict.fromkeys([*find_train_runs([workspace.subdir(workspace.TRAININGS)]), *extra]))


def launch_form(runs: list[Path]) -> None:
    st.subheader("Evaluate a training run")
    added = st.text_input("Add a run directory by path (optional)", key="ev_add").strip()
    if added and st.button("Add", key="ev_add_go"):
        ev.open_training_run(added)  # one-line error if it is not a finished run
        st.session_state.setdefault("eval_paths", []).append(str(Path(added).resolve()))
        st.rerun()
    finished = [str(p) for p in runs if ev.is_finished(p)]
    wanted = [p for p in map(str, st.session_state.get("eval_runs", [])) if p in finished]
    pick = st.multiselect("Finished runs", finished, default=wanted, key="ev_pick",
                          format_func=lambda p: Path(p).name)
    a, b, c = st.columns(3)
    acc_limit = a.number_input("Accuracy: examples (math data)", 0, 10_000, 20, key="ev_acc")
    max_new = b.number_input("Accuracy: max new tokens", 8, 4096, 256, key="ev_new")
    limit = c.number_input("Rows per data file (0 = all)", 0, 10_000_000, 0, key="ev_limit")
    task_data = st.text_input("Task data (empty: the run's held-out split)",
                              key="ev_task").strip() or None
    prior = st.text_input("More prior-capability data (a file; the bundled set is always "
                          "used)", key="ev_prior").strip()
    overwrite = st.checkbox("Overwrite existing evaluations", key="ev_overwrite")
    if st.button("Start evaluation", type="primary", disabled=not pick, key="ev_go"):
        job = jobs.launch_eval(pick, task_data=task_data, prior_data=[prior] if prior else None,
                               accuracy_limit=int(acc_limit), max_new_tokens=int(max_new),
                               limit=int(limit) or None, overwrite=overwrite)
        st.success(f"Started job {job.id}: evaluating {len(pick)} run(s)")


@state.fragment(run_every=2)
def jobs_panel() -> None:
    """Evaluation jobs; refreshes itself every 2 s without rerunning the page."""
    all_jobs = jobs.list_jobs(kind="eval", limit=10)
    if not all_jobs:
        return
    st.subheader("Evaluation jobs")
    seen, ended = st.session_state.setdefault("_ev_jobs_seen", {}), False
    for job in all_jobs:
        s = jobs.status(job)
        was, seen[job.id] = seen.get(job.id), s["state"]
        ended |= was in ("starting", "running") and s["state"] not in ("starting", "running")
        with st.container(border=True):
            a, b = st.columns([5, 1])
            a.markdown(f"**{job.name}** · {s['state']}")
            if s["state"] in ("starting", "running"):
                a.progress(s["fraction"], text=(
                    f"{s['stage']} · ETA {duration(s['eta_s'])}" if s["stage"] else
                    f"reading the data and loading both models... ({s['elapsed_s']:.0f}s)"))
                b.button("Cancel", key=f"ev_cancel_{job.id}", on_click=jobs.cancel, args=(job,))
            elif s["state"] == "failed":
                a.error(f"Evaluation failed: {s['message']}")
                with a.expander("Log"):
                    st.code(s.get("log") or "(empty)")
    if ended:  # an evaluation just ended: the whole page, so its results table shows it
        st.rerun()


MEASURES = {"accuracy": "accuracy", "prior_accuracy": "prior accuracy"}


def skipped(report: dict) -> dict[str, str]:
    """Measure -> why a complete report lacks it (``report["skipped"]``; a report from
    before reasons were recorded says so rather than leaving a bare blank)."""
    if report.get("status") != "complete":
        return {}
    why = dict(report.get("skipped") or {})
    for key in MEASURES:
        if not report.get(key) and key not in why:
            why[key] = "no reason recorded (an older evaluation: evaluate again to see why)"
    return why


def results(reports: list[dict]) -> list[dict]:
    """The table and the trade-off plot; returns the complete reports."""
    st.subheader("Runs: learned vs forgot")
    notes = [skipped(r) for r in reports]
    table = ev.report_table(reports).with_columns(pl.Series(
        "not computed", ["; ".join(f"{MEASURES.get(k, k)}: {v}" for k, v in n.items()) or None
                         for n in notes], dtype=pl.String))
    st.caption("Token-level means over all target tokens. Learned: Δ task NLL (tuned − base, "
               "negative = learned) and Δ mean q. Forgot: Δ prior NLL (positive = forgot) and "
               "the mean per-token KL(base ‖ tuned) on the prior set. Accuracy: exact match "
               "of greedy final answers (math data only).")
    st.dataframe(table.drop("path"), hide_index=True, key="ev_table",
                 column_config={c: st.column_config.NumberColumn(format="%.4f")
                                for c in table.columns if table[c].dtype == pl.Float64})
    for r, n in zip(reports, notes):
        for k, why in n.items():
            st.info(f"{r.get('name')}: {MEASURES.get(k, k)} not computed: {why}")
    x = st.radio("Forgetting axis", list(charts.FORGOT_AXES), horizontal=True, key="ev_x",
                 format_func=lambda c: "KL(base ‖ tuned)" if c == "prior_kl" else "Δ prior NLL")
    st.plotly_chart(charts.tradeoff_scatter(table, x), key="ev_scatter")
    return [r for r in reports if r.get("status") == "complete"]


@st.cache_data(max_entries=16, show_spinner=False)
def _example_deltas(base: str, tuned: str, mtime: float) -> pl.DataFrame:
    return example_deltas(Run(base), Run(tuned))


@st.cache_data(max_entries=16, show_spinner=False)
def _movers(base: str, tuned: str, mtime: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    return top_movers(Run(base), Run(tuned), 10), token_movers(Run(base), Run(tuned), 10)


def delta_view(done: list[dict]) -> None:
    st.subheader("Which tokens moved (Δlogp = tuned − base)")
    names = {r["run"]: r["name"] for r in done}
    wanted = st.session_state.pop("ev_run_wanted", None)  # "show" on a sweep's run
    for r in names:
        if str(Path(r).resolve()) == wanted:
            st.session_state["ev_run"] = r
    a, b, c = st.columns([2, 2, 1])
    run = a.selectbox("Run", list(names), format_func=names.get, key="ev_run")
    which = b.radio("Set", list(SETS), format_func=SETS.get, horizontal=True, key="ev_set")
    scale = c.slider("Colour scale (±nats)", 0.1, 5.0, 2.0, 0.1, key="ev_scale")
    eval_dir = ev.eval_dir(run)
    base, tuned = (r.path for r in ev.scored_pair(run, which))
    mtime = ev.report_path(run).stat().st_mtime
    per_ex = _example_deltas(str(base), str(tuned), mtime)
    top, by_token = _movers(str(base), str(tuned), mtime)
    left, right = st.columns(2)
    left.caption("Single tokens that moved most")
    left.dataframe(top, hide_index=True, key="ev_top")
    right.caption("Token texts that moved most on average (≥ 3 occurrences)")
    right.dataframe(by_token, hide_index=True, key="ev_by_token")
    ids = per_ex["example_id"].to_list()
    if not ids:
        st.info("This set has no target tokens.")
        return
    example_id = st.selectbox("Example (most changed first)", ids, key="ev_example",
                              format_func=lambda i: f"{i}  (max |Δ| "
                              f"{per_ex.filter(pl.col('example_id') == i)['max_abs_delta'][0]:.2f})")
    kl = (pl.read_parquet(eval_dir / ev.KL_FILE)
          if which == "prior" and (eval_dir / ev.KL_FILE).exists() else None)
    view = example_delta(Run(base), Run(tuned), example_id, kl)
    tgt = view.filter(pl.col("is_target"))
    cols = st.columns(4)
    cols[0].metric("Target tokens", f"{tgt.height:,}")
    cols[1].metric("Mean Δlogp", f"{tgt['delta'].mean():+.4f}")
    cols[2].metric("Mean q base → tuned", f"{tgt['q_base'].mean():.3f} → {tgt['q_tuned'].mean():.3f}")
    cols[3].metric("Mean KL", f"{tgt['kl'].mean():.4f}" if kl is not None else "–")
    st.html(delta_legend(scale))
    st.html(delta_html(view, scale))
    if st.button("Open the tuned scores of this set in the other pages", key="ev_activate"):
        state.set_active_run(tuned)
        st.rerun()


def accuracy_section(done: list[dict]) -> None:
    with_acc = [r for r in done if r.get("accuracy") or r.get("prior_accuracy")]
    if not with_acc:
        return
    with st.expander("Greedy answers (accuracy)"):
        names = {r["run"]: r["name"] for r in with_acc}
        run = st.selectbox("Run", list(names), format_func=names.get, key="ev_acc_run")
        report = next(r for r in with_acc if r["run"] == run)
        sets = {"task": ev.ACCURACY, "prior": ev.PRIOR_ACCURACY}
        shown = [s for s in sets if report.get("accuracy" if s == "task" else "prior_accuracy")]
        which = st.radio("Set", shown, horizontal=True, key="ev_acc_set")
        summary = report["accuracy" if which == "task" else "prior_accuracy"]
        st.caption(f"{summary['base']:.0%} -> {summary['tuned']:.0%} of {summary['n']}: "
                   f"{summary.get('lost', 0)} lost (right before, wrong after), "
                   f"{summary.get('gained', 0)} gained")
        path = ev.eval_dir(run) / sets[which]
        st.dataframe(pl.read_parquet(path).drop("reference_text"), hide_index=True,
                     key="ev_acc_table")


def sweep_dirs() -> list[Path]:
    """Sweeps of the workspace (``WORKSPACE/sweeps/``) plus the ones added by path."""
    extra = [Path(p) for p in st.session_state.get("sweep_paths", [])]
    return list(dict.fromkeys([*find_sweeps([workspace.subdir(sweep_jobs.SWEEPS)]), *extra]))


def sweeps_section() -> None:
    st.subheader("Sweeps: the learn-vs-forget frontier")
    added = st.text_input("Add a sweep directory by path (written by `infosft sweep --out "
                          "DIR`)", key="sw_add").strip()
    if added and st.button("Add", key="sw_add_go"):
        read_sweep_report(added)  # one-line error if it is not a sweep with a report
        st.session_state.setdefault("sweep_paths", []).append(str(Path(added).resolve()))
        st.rerun()
    sweeps = [str(p) for p in sweep_dirs()]
    if not sweeps:
        st.caption("No sweeps yet: `infosft sweep --data DATA --out "
                   f"{workspace.subdir(sweep_jobs.SWEEPS)}/NAME --scheme sft --scheme infosft:P=0.9 ...` "
                   "trains and evaluates a grid; its frontier appears here.")
        return
    pick = st.selectbox("Sweep", sweeps, key="sw_pick", format_func=lambda p: Path(p).name)
    frontier_view(pick)


@state.fragment(run_every=5)
def frontier_view(sweep: str) -> None:
    """The sweep's plot and table; refreshes itself while the sweep runs (the report is
    rewritten after each run)."""
    report = read_sweep_report(sweep)
    runs, pts = report_frame(report["runs"]), report_frame(report["points"])
    measured = next((r for r in report["runs"] if r.get("learned_measure")), None)
    pending = runs.filter(pl.col("learned").is_null()).height
    if not measured:
        st.info(f"No run of this sweep is evaluated yet ({pending} queued or running).")
        return
    st.plotly_chart(charts.frontier_scatter(runs, pts, learned=measured["learned_measure"],
                                            forgot=measured["forgot_measure"]),
                    key="sw_chart")
    st.caption("Bars: 95% bootstrap intervals over the evaluated examples (diamonds: a grid "
               "point's mean over its seeds, bars from the smallest to the largest seed). "
               "A run is on the frontier when no other run learned at least as much and "
               "forgot at most as much, and did better on one of them."
               + (f" {pending} run(s) not evaluated yet." if pending else ""))
    st.dataframe(runs.drop("run", "seeds"), hide_index=True, key="sw_table",
                 column_config={c: st.column_config.NumberColumn(format="%.4f")
                                for c in runs.columns if runs[c].dtype == pl.Float64})
    done = runs.filter(pl.col("learned").is_not_null())
    a, b = st.columns([3, 2])
    run = a.selectbox("A run of this sweep", done["run"].to_list(), key="sw_run",
                      format_func=lambda p: Path(p).name)
    if b.button("Show which tokens moved in this run", key="sw_open"):
        st.session_state.setdefault("eval_paths", []).append(run)
        st.session_state["ev_run_wanted"] = str(Path(run).resolve())
        st.rerun()


@st.cache_resource(max_entries=2, show_spinner="loading the base and the tuned model...")
def _models(base: str | None, final: str):
    """(base, tuned, tokenizer), loaded once per run and kept for the next prompt."""
    from infosft.models import load_model

    base_model, tokenizer, _ = load_model(base)
    tuned_model, _, _ = load_model(final)
    return base_model, tuned_model, tokenizer


def try_model(runs: list[Path]) -> None:
    """A prompt answered by the base and the tuned model side by side."""
    from infosft.analysis.try_model import side_by_side
    from infosft.app.render import generated_html

    finished = [str(p) for p in runs if ev.is_finished(p)]
    if not finished:
        return
    with st.expander("Try the model: one prompt, the base and the tuned model side by side"):
        a, b = st.columns([3, 1])
        run = a.selectbox("Run", finished, key="try_run", format_func=lambda p: Path(p).name)
        new = b.number_input("Max new tokens", 1, 1024, 64, key="try_new")
        prompt = st.text_area("Prompt (sent as a user turn through the chat template)",
                              key="try_prompt", height=80)
        if not st.button("Generate", key="try_go", disabled=not prompt.strip()):
            return
        tr = ev.open_training_run(run)
        base, tuned, tok = _models(tr.base_model, str(tr.final))
        out = side_by_side(base, tuned, tok, prompt, max_new_tokens=int(new),
                           use_template=tr.config.get("use_template") is not False)
        st.caption("Each token coloured by its probability under the *other* model: red "
                   "where the other model would not have said it. Hover or focus a token "
                   "for both probabilities.")
        left, right = st.columns(2)
        for col, who, other in ((left, "base", "tuned"), (right, "tuned", "base")):
            col.markdown(f"**{who.capitalize()} model**")
            toks = out[who]["tokens"]
            if toks.is_empty():
                col.caption("(no tokens: it ended its turn at once)")
            else:
                col.html(generated_html(toks, who, other))


def body() -> None:
    st.title("Evaluate")
    st.caption("What a fine-tune learned (held-out task examples) and what it forgot (things "
               "the base model already did well), both scored under the base and the tuned "
               "model.")
    runs = run_dirs()
    state.guard(jobs_panel)
    state.guard(sweeps_section)
    state.guard(lambda: results_section(runs))  # a damaged report: one line, the form stays
    state.guard(lambda: try_model(runs))
    state.guard(lambda: launch_form(runs))


def results_section(runs: list[Path]) -> None:
    reports = ev.read_reports(runs)
    if not reports:
        st.info("No evaluated runs yet: start one below, or run `infosft eval RUN`.")
        return
    done = results(reports)
    if done:
        state.guard(lambda: delta_view(done))
        state.guard(lambda: accuracy_section(done))


state.guard(body)
