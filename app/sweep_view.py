"""The Train page's sweep parts: the grid form (sharing the page's data and optimizer
inputs) and the queue panel that follows a sweep live, with Stop and Resume.

The jobs themselves are :mod:`app.sweep_jobs`; the frontier is drawn on the Evaluate
page, which lists the same ``WORKSPACE/sweeps/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import streamlit as st

from infosft.app import state, sweep_jobs

DEFAULT_GRID = "sft\ndft\ninfosft:P=0.9\ninfosft:P=0.95\nprofit:threshold=0.1"
EVAL_KEYS = {"sw_task": "", "sw_prior": "", "sw_acc": 20, "sw_new": 256}


def form(data: dict | None, opts: dict) -> None:
    """Grid, seeds, evaluation settings and name; Launch starts ``infosft sweep``.

    ``data`` and ``opts`` are the Train form's data and optimizer inputs: every run of
    the sweep trains with them, each with its own scheme and seed."""
    if data is None or data.get("mode") != "online":
        st.warning("A sweep trains with online weights (each run its own scheme): choose "
                   "Weights: online.")
        return
    ss = st.session_state
    for key, value in {"sw_grid": DEFAULT_GRID, "sw_seeds": "0", "sw_devices": "",
                       "sw_name": f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
                       **EVAL_KEYS}.items():
        ss.setdefault(key, value)
    grid = st.text_area("Grid: one scheme per line, `NAME` or `NAME:knob=value,...`",
                        key="sw_grid", height=140,
                        help="e.g. sft, dft, infosft:P=0.9, infosft:C=2.5, "
                        "profit:threshold=0.2, profit:threshold=0.2/0.8,direction=middle")
    seeds = st.text_input("Seeds (each grid point trains once per seed)", key="sw_seeds")
    a, b = st.columns(2)
    task = a.text_input("Task data to evaluate on (empty: each run's eval split)",
                        key="sw_task").strip()
    prior = b.text_input("More prior-capability data (a file; the bundled set is always "
                         "used)", key="sw_prior").strip()
    acc = a.number_input("Accuracy: examples (math data)", 0, 10_000, key="sw_acc")
    new = b.number_input("Accuracy: max new tokens", 8, 4096, key="sw_new")
    devices = a.text_input("Devices (empty: one run per GPU where there are several)",
                           key="sw_devices", placeholder="e.g. cuda:0 cuda:1",
                           help="one run trains and is evaluated on each at a time, in a "
                           "process that sees only that device; cpu may repeat (the cores "
                           "are split between its runs)")
    name = b.text_input("Sweep name (a folder in the workspace's sweeps/)", key="sw_name")
    try:
        points, seed_list = sweep_jobs.parse_grid(grid), sweep_jobs.parse_seeds(seeds)
        device_list = sweep_jobs.parse_devices(devices)
    except state.USER_ERRORS as e:
        st.error(state.error_line(e))
        return
    how = (f"side by side on {len(device_list)} devices" if device_list and len(device_list) > 1
           else "one after another")
    st.caption(f"{len(points) * len(seed_list)} training runs, {how}, each evaluated when it "
               "finishes.")
    if not st.button("Launch sweep", type="primary", key="sw_go"):
        return
    if not task and not opts.get("eval_split"):
        st.error("Nothing to evaluate on: give task data, or an eval split above 0.")
        return
    extra = {k: data[k] for k in ("fields", "no_template", "split") if data.get(k)}
    try:
        job = sweep_jobs.launch_sweep(
            name, data["data"], points, seed_list, **extra, **opts, task_data=task or None,
            prior_data=[prior] if prior else None, accuracy_limit=int(acc),
            max_new_tokens=int(new), devices=device_list)
    except state.USER_ERRORS as e:
        st.error(state.error_line(e))
        return
    ss["sw_follow"] = job.run_dir
    st.success(f"Started job {job.id}: the sweep runs in `{job.run_dir}`")


STATE_TEXT = {"waiting": "waiting", "training": "training", "trained": "trained, to evaluate",
              "evaluating": "evaluating", "done": "done", "stopped": "stopped",
              "failed": "failed"}


@state.fragment(run_every=2)
def panel() -> None:
    """The sweeps of the workspace: the chosen one's queue, live, with Stop / Resume."""
    sweeps = [str(p) for p in sweep_jobs.list_sweeps()]
    if not sweeps:
        return
    st.subheader("Sweeps")
    ss = st.session_state
    if ss.get("sw_follow") not in sweeps:
        ss["sw_follow"] = sweeps[0]
    out = st.selectbox("Sweep", sweeps, key="sw_follow", format_func=lambda p: Path(p).name)
    s = sweep_jobs.sweep_status(out)
    current = next((r for r in s["runs"] if r["name"] == s["current"]), None)
    now = f" · now {STATE_TEXT[current['state']]} {current['name']}" if current else ""
    st.progress(s["fraction"], text=f"{s['state']} · {s['done']} of {s['total']} runs done{now}")
    if s["runs"]:
        st.dataframe(pl.DataFrame(s["runs"]).with_columns(
            pl.col("state").replace_strict(STATE_TEXT, default=pl.col("state"))),
            hide_index=True, key="sw_queue")
    if s["state"] == "failed":
        st.error(f"The sweep failed: {s['message']}")
    a, b, c = st.columns(3)
    if s["state"] == "running" and a.button("Stop", key="sw_stop",
                                            help="the run in training saves a checkpoint"):
        sweep_jobs.stop_sweep(out)
        st.info(f"Stopping: {s['current'] or 'the sweep'} saves a checkpoint first; "
                "Resume continues from it.")
    elif s["state"] == "stopping":
        a.caption("Stopping after the current step…")
    if s["state"] in ("stopped", "failed") and b.button("Resume", key="sw_resume",
                                                        type="primary"):
        job = sweep_jobs.resume_sweep(out)
        st.success(f"Resumed as job {job.id}")
    if s["done"] and c.button("See the frontier", key="sw_to_eval"):
        ss["sw_pick"] = out
        st.switch_page("views/evaluate.py")
    if s.get("log"):
        with st.expander("Log (last lines)"):
            st.code(s["log"])
