"""Sweeps: a grid of schemes, knobs and seeds trained and evaluated as one queue.

Layout (this module owns it)::

    SWEEP/sweep.json           the grid and the shared settings (a --resume must match)
    SWEEP/runs/NAME/           an ordinary training run, with its RUN/eval/ (infosft eval)
    SWEEP/report.json          {"runs": [...]}: one row per grid point and seed, rewritten
                               after every run

Each row holds ``scheme``, ``knobs``, ``seed``, ``run`` (its directory), ``learned``
(higher is better), ``forgot`` (lower is better), the measures they are, and
``on_frontier`` (no other run is at least as good on both and better on one). Where the
evaluation answered questions, ``learned`` is the change of task accuracy and ``forgot``
the share of prior answers lost; otherwise ``learned`` is the fall of the task NLL and
``forgot`` KL(base || tuned) on the prior set.

Runs go one after another on one device. A killed sweep continues with ``--resume``:
finished and evaluated runs are kept, a stopped run resumes from its checkpoint, a
failed or half-written one starts again.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from infosft import train_status as ts
from infosft.atomic import atomic_write_json
from infosft.errors import InfosftError
from infosft.weights import resolve_knobs

SWEEP_FILE = "sweep.json"
REPORT_FILE = "report.json"
RUNS = "runs"


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
        knobs[key.strip()] = _value(value.strip())
    try:
        resolve_knobs(name, **{k: tuple(v) if isinstance(v, list) else v
                               for k, v in knobs.items()})
    except (ValueError, TypeError) as e:
        raise InfosftError(f"--scheme {text!r}: {e}") from None
    return name, knobs


def _value(text: str) -> Any:
    if "/" in text:
        return [_value(part) for part in text.split("/")]
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


def frontier(rows: list[dict[str, Any]]) -> list[bool]:
    """Whether each row is on the learned-vs-forgot frontier (rows without numbers: no).

    >>> frontier([{"learned": 1, "forgot": 1}, {"learned": 2, "forgot": 1},
    ...           {"learned": 3, "forgot": 2}])
    [False, True, True]
    """
    def beats(a, b):
        return (a["learned"] >= b["learned"] and a["forgot"] <= b["forgot"]
                and (a["learned"] > b["learned"] or a["forgot"] < b["forgot"]))
    ok = [r.get("learned") is not None and r.get("forgot") is not None for r in rows]
    return [good and not any(ok[j] and beats(rows[j], r) for j in range(len(rows)) if j != i)
            for i, (r, good) in enumerate(zip(rows, ok))]


def outcome(report: dict[str, Any] | None) -> dict[str, Any]:
    """``learned``/``forgot`` and their measures from an evaluation report."""
    if not report or report.get("status") != "complete":
        return {"learned": None, "forgot": None, "learned_measure": None, "forgot_measure": None}
    acc, prior = report.get("accuracy"), report.get("prior_accuracy")
    if acc and acc.get("n"):
        learned, lm = acc["delta"], "task accuracy change"
    else:
        learned, lm = -report["learned"]["delta_nll"], "task NLL fall"
    if prior and prior.get("n"):
        forgot, fm = prior["lost"] / prior["n"], "share of prior answers lost"
    else:
        forgot, fm = report["forgot"]["mean_kl"], "prior KL(base||tuned)"
    return {"learned": learned, "forgot": forgot, "learned_measure": lm, "forgot_measure": fm}


def run_sweep(out: str | Path, points: list[str], seeds: list[int], train_cfg, eval_cfg, *,
              resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every grid point and seed into ``out``; returns the report.

    ``train_cfg`` is a resolved :class:`infosft.train_config.TrainConfig` (its scheme,
    knobs, seed and out are set per run); ``eval_cfg`` an ``analysis.evaluate.EvalConfig``.
    """
    from infosft.analysis.evaluate import read_report
    from infosft.train import train
    from infosft.train_config import validate

    out = Path(out)
    grid = [(parse_point(p), s) for p in points for s in seeds]
    if not grid:
        raise InfosftError("a sweep needs at least one --scheme and one seed")
    plan = {"points": points, "seeds": seeds, "train": _plain(asdict(train_cfg), drop={
        "out", "scheme", "C", "P", "threshold", "direction", "seed"}),
        "eval": _plain(asdict(eval_cfg))}
    _start(out, plan, resume)
    for (scheme, knobs), seed in grid:
        run = out / RUNS / run_name(scheme, knobs, seed)
        knob_fields = {"C": None, "P": None, "threshold": None, "direction": None} | knobs
        cfg = replace(train_cfg, out=str(run), scheme=scheme, seed=seed, **knob_fields)
        validate(cfg)
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


def _plain(values: dict[str, Any], drop: set[str] = frozenset()) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in drop},
                                 default=str))


def _start(out: Path, plan: dict[str, Any], resume: bool) -> None:
    path = out / SWEEP_FILE
    if resume:
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            raise InfosftError(f"{out}: no sweep to resume (no readable {SWEEP_FILE})") from None
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

    out = Path(out)
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
                         **outcome(report)})
    for row, on in zip(rows, frontier(rows)):
        row["on_frontier"] = on
    result = {"runs": rows}
    atomic_write_json(out / REPORT_FILE, result)
    return result
