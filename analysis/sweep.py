"""Sweeps: a grid of schemes, knobs and seeds trained and evaluated as one queue.

Layout (this module owns it)::

    SWEEP/sweep.json           the grid and the shared settings (a --resume must match)
    SWEEP/runs/NAME/           an ordinary training run, with its RUN/eval/ (infosft eval)
    SWEEP/report.json          {"runs": [...], "points": [...]}: one row per grid point
                               and seed, and one per grid point; rewritten after every run

Each run row holds ``scheme``, ``knobs``, ``seed``, ``run`` (its directory), ``learned``
(higher is better), ``forgot`` (lower is better), each ``{"value", "low", "high"}``
with its 95% bootstrap interval over examples (:mod:`analysis.uncertainty`) or null
before the run is evaluated, the measures they are, and ``on_frontier`` (no other run is
at least as good on both values and better on one). Where the evaluation answered
questions, ``learned`` is the change of task accuracy and ``forgot`` the share of prior
answers lost; otherwise ``learned`` is the fall of the task NLL and ``forgot``
KL(base || tuned) on the prior set. A point row is the same over the point's evaluated
seeds: ``value`` their mean, ``low`` / ``high`` their smallest and largest (the spread
over seeds), ``seeds`` how many, and its own ``on_frontier`` among the points.

Runs go one after another on one device, or side by side on several
(:mod:`analysis.sweep_devices`: ``SWEEP/queue/``). A killed sweep continues with ``--resume``:
finished and evaluated runs are kept, a stopped run resumes from its checkpoint, a
failed or half-written one starts again.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import polars as pl

from infosft import train_status as ts
from infosft.atomic import atomic_write_json
from infosft.errors import InfosftError
from infosft.weights import resolve_knobs

SWEEP_FILE = "sweep.json"
REPORT_FILE = "report.json"
RUNS = "runs"
PER_RUN = ("scheme", "C", "P", "threshold", "direction", "seed", "knobs")  # set by the grid


def parse_point(text: str) -> tuple[str, dict[str, Any]]:
    """A grid point ``NAME[:knob=value,...]``; numbers become floats, ``a/b`` a pair.

    >>> parse_point("infosft:P=0.9")
    ('infosft', {'P': 0.9})
    >>> parse_point("profit:threshold=0.2/0.8,direction=middle")
    ('profit', {'threshold': [0.2, 0.8], 'direction': 'middle'})
    """
    name, _, rest = text.partition(":")
    knobs: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise InfosftError(f"--scheme {text!r}: expected NAME:knob=value,..., got {item!r}")
        knobs[key.strip()] = parse_value(value.strip())
    try:
        resolve_knobs(name, **{k: tuple(v) if isinstance(v, list) else v
                               for k, v in knobs.items()})
    except (ValueError, TypeError) as e:
        raise InfosftError(f"--scheme {text!r}: {e}") from None
    return name, knobs


def parse_value(text: str) -> Any:
    """A knob value typed as text: an int, a float, ``a/b`` a pair, else the text.

    >>> parse_value("2"), parse_value("0.5"), parse_value("0.2/0.8"), parse_value("example")
    (2, 0.5, [0.2, 0.8], 'example')
    """
    if "/" in text:
        return [parse_value(part) for part in text.split("/")]
    try:
        return int(text) if re.fullmatch(r"-?\d+", text) else float(text)
    except ValueError:
        return text


def run_name(scheme: str, knobs: dict[str, Any], seed: int) -> str:
    """A directory name for a grid point and seed.

    >>> run_name("profit", {"threshold": [0.2, 0.8], "direction": "middle"}, 1)
    'profit-threshold0.2_0.8-directionmiddle-s1'
    """
    parts = [scheme] + [f"{k}{'_'.join(map(str, v)) if isinstance(v, list) else v}"
                        for k, v in knobs.items()] + [f"s{seed}"]
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))


def value(x: Any) -> float | None:
    """A measure's value: the number itself, or ``x["value"]`` of an interval.

    >>> value({"value": 0.5, "low": 0.4, "high": 0.6}), value(0.25), value(None)
    (0.5, 0.25, None)
    """
    return x.get("value") if isinstance(x, dict) else x


def frontier(rows: list[dict[str, Any]]) -> list[bool]:
    """Whether each row is on the learned-vs-forgot frontier: no other row is at least as
    good on both values and better on one (rows without numbers: no).

    >>> frontier([{"learned": 1, "forgot": 1}, {"learned": 2, "forgot": 1},
    ...           {"learned": {"value": 3}, "forgot": {"value": 2}}, {"learned": None}])
    [False, True, True, False]
    """
    pts = [(value(r.get("learned")), value(r.get("forgot"))) for r in rows]
    ok = [a is not None and b is not None for a, b in pts]

    def beats(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])
    return [good and not any(ok[j] and beats(pts[j], pts[i]) for j in range(len(rows)) if j != i)
            for i, good in enumerate(ok)]


def outcome(run: str | Path, report: dict[str, Any] | None) -> dict[str, Any]:
    """``learned``/``forgot`` (each with its interval) and their measures from a run's
    evaluation; nulls until the evaluation is complete."""
    if not report or report.get("status") != "complete":
        return {"learned": None, "forgot": None, "learned_measure": None, "forgot_measure": None}
    from infosft.analysis.uncertainty import outcome_intervals

    return outcome_intervals(run, report)


def points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per grid point over its evaluated seeds: ``learned`` / ``forgot`` as
    ``{"value": mean, "low": min, "high": max}`` (the spread over seeds), ``seeds``, and
    ``on_frontier`` among the points.

    >>> rows = [{"scheme": "sft", "knobs": {}, "seed": s, "learned": {"value": v},
    ...          "forgot": {"value": 0.1}, "learned_measure": "m", "forgot_measure": "f"}
    ...         for s, v in [(0, 0.2), (1, 0.4)]]
    >>> p, = points(rows)
    >>> p["seeds"], round(p["learned"]["value"], 6), p["learned"]["high"], p["on_frontier"]
    (2, 0.3, 0.4, True)
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(json.dumps([r["scheme"], r["knobs"]]), []).append(r)
    out = []
    for group in groups.values():
        done = [r for r in group if value(r["learned"]) is not None
                and value(r["forgot"]) is not None]
        row = {"scheme": group[0]["scheme"], "knobs": group[0]["knobs"], "seeds": len(done),
               "runs": [r["run"] for r in done if "run" in r]}
        for key in ("learned", "forgot"):
            vals = [value(r[key]) for r in done]
            row[key] = ({"value": sum(vals) / len(vals), "low": min(vals), "high": max(vals)}
                        if vals else None)
        row["learned_measure"] = done[0]["learned_measure"] if done else None
        row["forgot_measure"] = done[0]["forgot_measure"] if done else None
        out.append(row)
    for row, on in zip(out, frontier(out)):
        row["on_frontier"] = on
    return out


def run_config(train_cfg: Any, run: Path, scheme: str, knobs: dict[str, Any], seed: int) -> Any:
    """The validated TrainConfig of one grid point and seed: the sweep's settings with the
    point's scheme and knobs (each knob not given by the point back to its default)."""
    from infosft.train_config import FLAT_KNOBS, knob_values, validate

    values = {k: None for k in FLAT_KNOBS} | knob_values(knobs) | {"seed": seed}
    cfg = replace(train_cfg, out=str(run), scheme=scheme, **values)
    validate(cfg)
    return cfg


def run_sweep(out: str | Path, points: list[str], seeds: list[int], train_cfg, eval_cfg, *,
              resume: bool = False, progress: bool = True,
              devices: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate every grid point and seed into ``out``; returns the report.

    ``train_cfg`` is a resolved :class:`infosft.train_config.TrainConfig` (its scheme,
    knobs, seed and out are set per run); ``eval_cfg`` an ``analysis.evaluate.EvalConfig``.
    ``devices``: two or more run the queue side by side, one run per device
    (:mod:`analysis.sweep_devices`); default one per GPU where there are several, else
    one run after another in this process. They do not change the results, so a resume
    may use others.
    """
    from infosft.analysis.sweep_devices import check_devices, default_devices, run_on_devices

    from infosft.analysis.evaluate import read_report
    from infosft.train import train
    out = Path(out).resolve()  # absolute run paths in the reports: readable from anywhere
    grid = [(parse_point(p), s) for p in points for s in seeds]
    if not grid:
        raise InfosftError("a sweep needs at least one --scheme and one seed")
    devices = check_devices(devices) if devices else default_devices()
    _start(out, make_plan(points, seeds, train_cfg, eval_cfg), resume)
    if devices and len(devices) > 1:
        todo = []
        for (scheme, knobs), seed in grid:
            run = out / RUNS / run_name(scheme, knobs, seed)
            todo.append((run_config(train_cfg, run, scheme, knobs, seed), run))
        problems = run_on_devices(out, todo, eval_cfg, devices, progress)
        report = write_report(out)
        if problems:
            raise InfosftError(f"{problems[0]}" + (f" (and {len(problems) - 1} more)"
                                                   if len(problems) > 1 else "")
                               + "; continue the sweep with --resume")
        return report
    for (scheme, knobs), seed in grid:
        run = out / RUNS / run_name(scheme, knobs, seed)
        cfg = run_config(train_cfg, run, scheme, knobs, seed)
        state = ts.read_status(run).get("state") if (run / ts.CONFIG).exists() else None
        if state != "finished":
            if progress:
                print(f"sweep: training {run.name}", flush=True)
            again = state is not None
            can_resume = again and ts.last_checkpoint(run) is not None and state != "failed"
            train(cfg, resume=can_resume, overwrite=again and not can_resume)
            if ts.read_status(run).get("state") != "finished":  # stopped: the sweep stops too
                write_report(out)
                raise InfosftError(f"{run}: training stopped; continue the sweep with --resume")
        report = read_report(run)
        if not report or report.get("status") != "complete":
            from infosft.analysis.evaluate import evaluate_run

            if progress:
                print(f"sweep: evaluating {run.name}", flush=True)
            evaluate_run(run, replace(eval_cfg, overwrite=True), progress=progress)
        write_report(out)
    return write_report(out)


def make_plan(points: list[str], seeds: list[int], train_cfg, eval_cfg) -> dict[str, Any]:
    """What ``sweep.json`` records: the grid, and the training settings every run shares
    (its per-run fields left out) and the evaluation settings, as plain JSON."""
    return {"points": list(points), "seeds": list(seeds),
            "train": _plain(asdict(train_cfg), drop={"out", *PER_RUN}),
            "eval": _plain(asdict(eval_cfg))}


def read_plan(out: str | Path) -> dict[str, Any]:
    """``SWEEP/sweep.json``: the grid and the settings the sweep was started with."""
    path = Path(out) / SWEEP_FILE
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(plan, dict) or not {"points", "seeds", "train", "eval"} <= set(plan):
            raise ValueError
    except (OSError, ValueError):
        raise InfosftError(f"{out}: no sweep to resume (no readable {SWEEP_FILE})") from None
    return plan


def stored_settings(out: str | Path):
    """``(points, seeds, train_cfg, eval_cfg)`` as the sweep in ``out`` was started, for a
    ``--resume`` without the grid's flags."""
    from infosft.analysis.evaluate import EvalConfig
    from infosft.train_config import resolve

    plan = read_plan(out)
    train_cfg = resolve({**plan["train"], "out": str(Path(out) / RUNS / "_")},
                        source=Path(out) / SWEEP_FILE)
    try:
        eval_cfg = EvalConfig(**plan["eval"])
    except TypeError as e:
        raise InfosftError(f"{Path(out) / SWEEP_FILE}: eval settings: {e}") from None
    return plan["points"], plan["seeds"], train_cfg, eval_cfg


def _plain(values: dict[str, Any], drop: set[str] = frozenset()) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in drop},
                                 default=str))


def _start(out: Path, plan: dict[str, Any], resume: bool) -> None:
    path = out / SWEEP_FILE
    if resume:
        old = read_plan(out)
        if old != plan:
            changed = sorted(k for k in plan if old.get(k) != plan[k])
            raise InfosftError(f"{out}: the sweep was started with other settings "
                               f"({', '.join(changed)}); resume with the same flags")
        return
    if out.exists() and any(out.iterdir()):
        raise InfosftError(f"{out} exists and is not empty; use --resume to continue a sweep "
                           "or choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan)


def write_report(out: str | Path) -> dict[str, Any]:
    """``SWEEP/report.json`` from the runs there now (in grid order)."""
    from infosft.analysis.evaluate import read_report

    out = Path(out).resolve()
    plan = json.loads((out / SWEEP_FILE).read_text())
    rows = []
    for point in plan["points"]:
        scheme, knobs = parse_point(point)
        for seed in plan["seeds"]:
            run = out / RUNS / run_name(scheme, knobs, seed)
            try:
                report = read_report(run) if run.exists() else None
            except InfosftError:
                report = None
            rows.append({"scheme": scheme, "knobs": knobs, "seed": seed, "run": str(run),
                         **outcome(run, report)})
    for row, on in zip(rows, frontier(rows)):
        row["on_frontier"] = on
    result = {"runs": rows, "points": points(rows)}
    atomic_write_json(out / REPORT_FILE, result)
    return result


def _fmt(x: Any, signed: bool) -> str:
    if x is None:
        return "not evaluated"
    sign = "+" if signed else ""
    if not isinstance(x, dict):
        return f"{x:{sign}.4f}"
    return f"{x['value']:{sign}.4f} [{x['low']:{sign}.3f}, {x['high']:{sign}.3f}]"


def format_report(report: dict[str, Any]) -> str:
    """The report as text for the terminal: every run with its interval, ``*`` on the
    frontier, then the grid points over seeds where a point has more than one, then the
    frontier in words.

    >>> iv = lambda v: {"value": v, "low": v - 0.1, "high": v + 0.1}
    >>> runs = [{"run": "x/sft-s0", "learned": iv(0.5), "forgot": iv(0.2),
    ...          "learned_measure": "task accuracy change",
    ...          "forgot_measure": "share of prior answers lost", "on_frontier": True},
    ...         {"run": "x/dft-s0", "learned": iv(0.3), "forgot": iv(0.3),
    ...          "learned_measure": "task accuracy change",
    ...          "forgot_measure": "share of prior answers lost", "on_frontier": False}]
    >>> print(format_report({"runs": runs, "points": []}))
    learned: task accuracy change (higher is better); forgot: share of prior answers lost (lower is better); [95% bootstrap interval over examples]
      run                                      learned                      forgot
    * sft-s0                                   +0.5000 [+0.400, +0.600]     0.2000 [0.100, 0.300]
      dft-s0                                   +0.3000 [+0.200, +0.400]     0.3000 [0.200, 0.400]
    frontier: sft-s0; dominated: dft-s0
    """
    runs = report.get("runs", [])
    measured = next((r for r in runs if r.get("learned_measure")), None)
    lines = []
    if measured:
        lines.append(f"learned: {measured['learned_measure']} (higher is better); forgot: "
                     f"{measured['forgot_measure']} (lower is better); "
                     "[95% bootstrap interval over examples]")
    lines.append(f"  {'run':40s} {'learned':28s} forgot")
    for r in runs:
        lines.append(f"{'*' if r.get('on_frontier') else ' '} {Path(r['run']).name:40s} "
                     f"{_fmt(r.get('learned'), True):28s} {_fmt(r.get('forgot'), False)}")
    pts = report.get("points", [])
    if any(p.get("seeds", 0) > 1 for p in pts):
        lines.append("grid points: mean [smallest, largest] over their seeds")
        for p in pts:
            knobs = ",".join(f"{k}={v}" for k, v in p["knobs"].items())
            name = f"{p['scheme']}{':' + knobs if knobs else ''} ({p['seeds']} seeds)"
            lines.append(f"{'*' if p.get('on_frontier') else ' '} {name:40s} "
                         f"{_fmt(p.get('learned'), True):28s} {_fmt(p.get('forgot'), False)}")
    on = [Path(r["run"]).name for r in runs if r.get("on_frontier")]
    off = [Path(r["run"]).name for r in runs
           if not r.get("on_frontier") and value(r.get("learned")) is not None]
    lines.append(f"frontier: {', '.join(on) or 'none yet'}"
                 + (f"; dominated: {', '.join(off)}" if off else ""))
    return "\n".join(lines)


def find_sweeps(roots) -> list[Path]:
    """Every sweep directory (one holding ``sweep.json``) directly inside ``roots``."""
    found = []
    for root in map(Path, roots):
        if root.is_dir():
            found += sorted(p for p in root.iterdir() if (p / SWEEP_FILE).is_file())
    return found


def read_sweep_report(path: str | Path) -> dict[str, Any]:
    """``SWEEP/report.json``; a one-line error when it is missing or damaged."""
    file = Path(path) / REPORT_FILE
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(report.get("runs"), list):
            raise ValueError("no runs list")
    except OSError:
        raise InfosftError(f"{file}: no sweep report yet (it is written after each run)") \
            from None
    except (ValueError, AttributeError) as e:
        raise InfosftError(f"{file}: not a sweep report ({e})") from None
    report.setdefault("points", points(report["runs"]))
    return report


def report_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Run (or point) rows as a flat frame for tables and plots: ``name``, ``scheme``,
    ``knobs`` (text), ``seed`` / ``seeds``, ``learned``, ``learned_low``,
    ``learned_high``, the same for ``forgot``, ``on_frontier``, ``run`` (a run's
    directory; null for points). Unevaluated runs have null numbers.

    >>> f = report_frame([{"scheme": "infosft", "knobs": {"P": 0.9}, "seed": 0,
    ...                    "run": "s/runs/a", "learned": {"value": 0.5, "low": 0.4,
    ...                    "high": 0.6}, "forgot": None, "on_frontier": False}])
    >>> f.select("name", "knobs", "learned_low", "forgot").row(0)
    ('a', 'P=0.9', 0.4, None)
    """
    from infosft.analysis.training import format_knobs

    out = []
    for r in rows:
        row = {"name": Path(r["run"]).name if r.get("run") else
               f"{r['scheme']}{(' ' + format_knobs(r['knobs'])) if r['knobs'] else ''}",
               "scheme": r["scheme"], "knobs": format_knobs(r["knobs"]),
               "seed": r.get("seed"), "seeds": r.get("seeds")}
        for key in ("learned", "forgot"):
            x = r.get(key)
            row[key] = value(x)
            row[f"{key}_low"] = x.get("low") if isinstance(x, dict) else None
            row[f"{key}_high"] = x.get("high") if isinstance(x, dict) else None
        row["on_frontier"] = bool(r.get("on_frontier"))
        row["run"] = r.get("run")
        out.append(row)
    schema = {"name": pl.String, "scheme": pl.String, "knobs": pl.String, "seed": pl.Int64,
              "seeds": pl.Int64, **{f"{k}{s}": pl.Float64 for k in ("learned", "forgot")
                                     for s in ("", "_low", "_high")},
              "on_frontier": pl.Boolean, "run": pl.String}
    return pl.DataFrame(out, schema=schema)


def sweep_progress(out: str | Path) -> dict[str, Any]:
    """Where a sweep stands, read from its directory alone (so it survives an app
    restart and works for sweeps started from the CLI).

    Returns ``runs`` (grid order; each ``name``, ``state`` one of ``waiting``,
    ``training``, ``trained`` (not evaluated yet), ``evaluating``, ``done``, ``stopped``,
    ``failed``, and ``step`` / ``total_steps`` of its training), ``done``, ``total``,
    ``current`` (the run being trained or evaluated, or None) and ``fraction`` (finished
    runs plus the current training's share of its steps, over all runs).
    """
    from infosft.analysis.evaluate import read_report

    out = Path(out)
    plan = read_plan(out)
    rows = []
    for point in plan["points"]:
        scheme, knobs = parse_point(point)
        for seed in plan["seeds"]:
            run = out / RUNS / run_name(scheme, knobs, seed)
            row = {"name": run.name, "state": "waiting", "step": None, "total_steps": None}
            if (run / ts.CONFIG).exists():
                st = ts.read_status(run)
                row.update(step=st.get("step"), total_steps=st.get("total_steps"))
                if st["state"] == "finished":
                    try:
                        report = read_report(run)
                    except InfosftError:
                        report = None
                    status = (report or {}).get("status")
                    row["state"] = ("done" if status == "complete" else
                                    "evaluating" if status == "running" else "trained")
                elif st["state"] in ts.ACTIVE_STATES:
                    row["state"] = "training"
                else:
                    row["state"] = st["state"] or "failed"
            rows.append(row)
    done = sum(r["state"] == "done" for r in rows)
    current = next((r for r in rows if r["state"] in ("training", "evaluating")), None)
    share = 0.0
    if current and current["state"] == "training" and current["total_steps"]:
        share = min((current["step"] or 0) / current["total_steps"], 1.0)
    return {"runs": rows, "done": done, "total": len(rows),
            "current": current["name"] if current else None,
            "fraction": (done + share) / len(rows) if rows else 0.0}
