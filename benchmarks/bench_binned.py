"""A slider move at any run size: exact per-token statistics against the binned ones.

    python benchmarks/bench_binned.py [--tokens 1000000 10000000] [--modes binned exact]
    python benchmarks/bench_binned.py --modes examples examples-exact   # the per-example pages

For each size, writes a synthetic run with the real layout (``analysis.synthetic``:
q drawn like real SFT data, 250 targets and 10 prompt tokens an example), then in a fresh process per mode
loads it as Overview and Tune do (``Targets.from_run``, exact; ``Targets.binned``, a fine
histogram) and times a slider move: ``analysis.tune.tune_view`` for a new C (the summary,
the four schemes' table, both histograms), median of 7. Prints the load time, the move,
and the process's RSS after loading, per mode and size.

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
from infosft.analysis.stats import Targets
from infosft.analysis.tune import Settings, tune_view
path, mode = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
t = Targets.binned(path) if mode == "binned" else Targets.from_run(path)
for log_x in (False, True):
    t.histogram(bins=50, log_x=log_x)
load = time.perf_counter() - t0
moves = []
for i in range(7):
    s = Settings(scheme="infosft", C=1.5 + 0.25 * i)
    t0 = time.perf_counter()
    tune_view(t, s, bins=50)
    moves.append(time.perf_counter() - t0)
print(json.dumps({"load_s": load, "move_ms": 1000 * statistics.median(moves),
                  "rss_mb": psutil.Process().memory_info().rss / 2**20}))
"""


_EXAMPLES = """
import json, statistics, sys, time
import psutil
from infosft.analysis.stats import ExampleBins, Targets
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
mid = int(examples["example_id"][examples.height // 2])
view = med(lambda i: token_view(run, mid, t, vocab, Settings(C=1.5 + 0.25 * i)), n=3)
view_r = med(lambda i: token_view(run, mid, t, vocab, Settings(direction="random",
                                                                 threshold=0.3, seed=i)), n=3)
print(json.dumps({"load_s": load, "move_ms": move, "random_ms": rnd, "view_ms": view,
                  "view_random_ms": view_r,
                  "rss_mb": psutil.Process().memory_info().rss / 2**20}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--modes", nargs="+", default=["binned", "exact"],
                    choices=["binned", "exact", "examples", "examples-exact"],
                    help="exact at 100M needs ~10 GB and minutes")
    args = ap.parse_args()
    from infosft.analysis.synthetic import make_run

    print(f"{'targets':>12} {'mode':>7} {'load s':>8} {'move ms':>8} {'RSS MB':>8}")
    for n in args.tokens:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run = make_run(Path(tmp) / "run", n_examples=max(1, n // 250), prompt_tokens=10,
                           target_tokens=250, part_examples=4000)
            print(f"({n:,} targets written in {time.perf_counter() - t0:.0f} s)", flush=True)
            for mode in args.modes:
                child = _EXAMPLES if mode.startswith("examples") else _CHILD
                out = subprocess.run([sys.executable, "-c", child, str(run.path), mode],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{n:>12,} {mode:>7} {r['load_s']:8.2f} {r['move_ms']:8.1f} "
                      f"{r['rss_mb']:8.0f}" + ("" if "view_ms" not in r else
                      f"  (ProFit random move {r['random_ms']:.0f} ms; Token view open "
                      f"{r['view_ms']:.0f} ms, ProFit random {r['view_random_ms']:.0f} ms)"),
                      flush=True)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s in all)")
