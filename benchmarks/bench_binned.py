"""A slider move at any run size: exact per-token statistics against the binned ones.

    python benchmarks/bench_binned.py [--tokens 1000000 10000000] [--modes binned exact]
    python benchmarks/bench_binned.py --modes examples examples-exact   # the per-example pages

For each size, writes a synthetic run with the real layout (``analysis.synthetic``:
q drawn like real SFT data, 250 targets and 10 prompt tokens an example, ``entropy_top20``
as ``infosft score`` writes it unless ``--fields`` says otherwise, a ``source`` of four
values in each record), then in a fresh process per mode loads it as Overview and Tune do
(``Targets.from_run``, exact; ``Targets.binned``, the cells of a joint histogram), builds
the breakdown by ``source`` (``Grouping.build`` / ``build_binned``) and times a slider
move: ``analysis.tune.tune_view`` for a new C (the summary, every supported scheme's
table, both histograms), then the by-source table for it, then Tune's three charts built
and serialized (``+charts``: the whole move, statistics to chart JSON), medians of 7.
Prints the load time, the cells, the move, the breakdown's build and move, the whole
move, and the RSS after loading.

The ``examples`` modes time the per-example pages instead: ``examples`` as a large run's
pages load it (``ExampleBins.from_run``: a coarse histogram per example), ``examples-exact``
as a small run's (``Targets.from_run``); then an Examples-table move (``examples_view``
for a new C, median of 7; ProFit random's move too, which regenerates the run's draws)
and a Token-view open of an example in the middle of the run (``token_view``, InfoSFT
and ProFit random, whose draws are regenerated up to the example), with the RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import json, statistics, sys, time
import psutil
from infosft.analysis import breakdown as bd
from infosft.analysis.stats import Targets
from infosft.analysis.store import Run
from infosft.analysis.tune import Settings, tune_view
from infosft.app import charts
from infosft.app.render import scheme_labels
path, mode = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
t = Targets.binned(path) if mode == "binned" else Targets.from_run(path)
for log_x in (False, True):
    t.histogram(bins=50, log_x=log_x)
load = time.perf_counter() - t0
t0 = time.perf_counter()
s0 = Settings()
tables = {str(t.over(sc, s0.knobs(sc)).grid): len(t.over(sc, s0.knobs(sc)).logp)
          for sc in t.schemes(knobs=s0.knobs)} if t.is_binned else {}
tables_s = time.perf_counter() - t0
t0 = time.perf_counter()
run = Run(path)
labels = bd.group_labels(run, "source")
g = (bd.Grouping.build_binned(run, t, labels, "source", examples=run.read_examples())
     if t.is_binned
     else bd.Grouping.build(t, labels, "source"))
for sc in t.schemes(knobs=s0.knobs):  # the grouping of every table the schemes read
    g.over(t, sc, s0.knobs(sc))
group_s = time.perf_counter() - t0
moves, by, drawn = [], [], []
for i in range(7):
    s = Settings(scheme="infosft", C=1.5 + 0.25 * i)
    t0 = time.perf_counter()
    view = tune_view(t, s, bins=50)
    t1 = time.perf_counter()
    table = g.table(t, {s.scheme: s.knobs()}, {s.scheme: view["weights"][s.scheme]})
    t2 = time.perf_counter()
    labels = scheme_labels(s)  # Tune's three charts, as the page builds and sends them
    for fig in (charts.q_histogram_with_curves(view["hist"], view["curves"], log_x=False,
                                               labels=labels),
                charts.weight_share_histogram(view["hist"], log_x=False, labels=labels),
                charts.group_share_bars(table, [s.scheme], labels, "source")):
        fig.to_json()
    moves.append(t1 - t0)
    by.append(t2 - t1)
    drawn.append(time.perf_counter() - t0)
out = {"load_s": load, "move_ms": 1000 * statistics.median(moves),
       "group_s": group_s, "by_ms": 1000 * statistics.median(by),
       "page_ms": 1000 * statistics.median(drawn),
       "cells": len(t.logp), "schemes": len(view["weights"]),
       "tables": tables, "tables_s": tables_s}
if "logp_ref" in run.token_fields():  # excess ranked within each example: keep moves
    t0 = time.perf_counter()
    ranks = t.over("excess", {"per": "example"})
    g.over(t, "excess", {"per": "example"})
    out["rank_s"] = time.perf_counter() - t0
    out["rank_cells"] = len(ranks.logp)
    moves = []
    for i in range(7):
        s = Settings(scheme="excess").with_knob("excess", "per", "example").with_knob(
            "excess", "keep", 0.3 + 0.05 * i)
        t0 = time.perf_counter()
        view = tune_view(t, s, bins=50)
        g.table(t, {s.scheme: s.knobs()}, {s.scheme: view["weights"][s.scheme]})
        moves.append(time.perf_counter() - t0)
    out["rank_move_ms"] = 1000 * statistics.median(moves)
out["rss_mb"] = psutil.Process().memory_info().rss / 2**20
print(json.dumps(out))
"""


_EXAMPLES = """
import json, statistics, sys, time
import psutil
from infosft.analysis.example_bins import ExampleBins
from infosft.analysis.stats import Targets
from infosft.analysis.store import Run
from infosft.analysis.table import examples_view
from infosft.analysis.tune import Settings
from infosft.analysis.view import token_view
path, mode = sys.argv[1], sys.argv[2]
run = Run(path)
examples, vocab = run.read_examples(), run.read_vocab()
t0 = time.perf_counter()
t = ExampleBins.from_run(path) if mode == "examples" else Targets.from_run(path)
load = time.perf_counter() - t0
def med(f, n=7):
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        f(i)
        out.append(time.perf_counter() - t0)
    return 1000 * statistics.median(out)
move = med(lambda i: examples_view(t, examples, "infosft", {"C": 1.5 + 0.25 * i},
                                   sort_by="mean_weight"))
rnd = med(lambda i: examples_view(t, examples, "profit", {"threshold": 0.1 + 0.05 * i,
                                  "direction": "random", "seed": 0}), n=3)
eaft = med(lambda i: examples_view(t, examples, "eaft", {"alpha": 0.5 + 0.25 * i},
                                   sort_by="mean_weight"))
mid = int(examples["example_id"][examples.height // 2])
view = med(lambda i: token_view(run, mid, t, vocab, Settings(C=1.5 + 0.25 * i)), n=3)
view_r = med(lambda i: token_view(run, mid, t, vocab, Settings(direction="random",
                                                                 threshold=0.3, seed=i)), n=3)
out = {"load_s": load, "move_ms": move, "random_ms": rnd, "eaft_ms": eaft,
       "view_ms": view, "view_random_ms": view_r}
if "logp_ref" in run.token_fields():
    for per in ("all", "example"):
        out[f"excess_{per}_ms"] = med(lambda i: examples_view(
            t, examples, "excess", {"keep": 0.3 + 0.05 * i, "per": per}, sort_by="mean_weight"))
out["rss_mb"] = psutil.Process().memory_info().rss / 2**20
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--modes", nargs="+", default=["binned", "exact"],
                    choices=["binned", "exact", "examples", "examples-exact"],
                    help="exact at 100M needs ~10 GB and minutes")
    ap.add_argument("--fields", nargs="*", default=["entropy_top20"],
                    help="optional per-token fields to write (entropy_top20 logp_ref; none: "
                    "q alone, as runs scored before the scheme registry)")
    args = ap.parse_args()

    from infosft.analysis.synthetic import make_run

    print(f"{'targets':>12} {'mode':>7} {'load s':>8} {'cells':>8} {'move ms':>8} "
          f"{'by: build s':>11} {'move ms':>8} {'+charts':>8} {'RSS MB':>8}")
    for n in args.tokens:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run = make_run(Path(tmp) / "run", n_examples=max(1, n // 250), prompt_tokens=10,
                           target_tokens=250, part_examples=4000, fields=args.fields,
                           sources=("web", "code", "math", "chat"))
            print(f"({n:,} targets written in {time.perf_counter() - t0:.0f} s)", flush=True)
            for mode in args.modes:
                child = _EXAMPLES if mode.startswith("examples") else _CHILD
                out = subprocess.run([sys.executable, "-c", child, str(run.path), mode],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                by = (f" {'':>8} {r['move_ms']:8.1f} {'':>11} {'':>8} {'':>8}" if "by_ms" not in r
                      else f" {r['cells']:8,} {r['move_ms']:8.1f} {r['group_s']:11.2f} "
                      f"{r['by_ms']:8.1f} {r['page_ms']:8.1f}")
                print(f"{n:>12,} {mode:>7} {r['load_s']:8.2f}{by} "
                      f"{r['rss_mb']:8.0f}" + ("" if not r.get("tables") else
                      "  (cells per table the schemes read: " + ", ".join(
                          f"{k} {v:,}" for k, v in r["tables"].items())
                      + f"; the others built in {r['tables_s']:.2f} s)")
                      + ("" if "rank_s" not in r else
                      f"  (excess per example: rank cells {r['rank_cells']:,} built in "
                      f"{r['rank_s']:.2f} s with the by-source ones; a keep move, "
                      f"statistics and by source, {r['rank_move_ms']:.1f} ms)")
                      + ("" if "view_ms" not in r else
                      f"  (ProFit random move {r['random_ms']:.0f} ms; EAFT move "
                      f"{r['eaft_ms']:.0f} ms; Token view open "
                      f"{r['view_ms']:.0f} ms, ProFit random {r['view_random_ms']:.0f} ms"
                      + ("" if "excess_all_ms" not in r else
                         f"; excess move {r['excess_all_ms']:.0f} ms, per example "
                         f"{r['excess_example_ms']:.0f} ms") + ")"),
                      flush=True)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s in all)")
