"""How long a slider move takes: every statistic for a new C on 10 million target tokens.

    python benchmarks/bench_stats.py [--tokens 10000000]

Builds a synthetic run (token parts with the real schema's columns that stats reads;
q drawn from a mix like real SFT data: many near-certain tokens, a long tail), loads
its targets once (what the app caches per run), then times a "slider move": the
scheme summary, both q histograms (counts and weight) and the per-example table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from infosft.analysis.stats import Targets
from infosft.analysis.store import Run
from infosft.analysis.synthetic import make_run


def synthetic_run(path: Path, n_tokens: int, tokens_per_example: int = 200) -> Run:
    """A complete run with the real layout (every part is checked on reading), about
    ``n_tokens`` target tokens, 10 prompt tokens an example."""
    return make_run(path, n_examples=max(1, n_tokens // tokens_per_example), prompt_tokens=10,
                    target_tokens=tokens_per_example, part_examples=5000)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=10_000_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = synthetic_run(Path(tmp) / "run", args.tokens)
        t0 = time.perf_counter()
        targets = Targets.from_run(run)
        for log_x in (False, True):  # bin indices are computed once per run, like the app
            targets.histogram(bins=60, log_x=log_x)
        load_s = time.perf_counter() - t0
        timings = {"weights": [], "summary": [], "histograms": [], "example table": [],
                   "total": []}
        for C in np.linspace(1.0, 4.0, args.repeats):
            t0 = time.perf_counter()
            w = targets.weights("infosft", C=C)
            t1 = time.perf_counter()
            targets.summary("infosft", w=w, C=C)
            t2 = time.perf_counter()
            targets.histogram(bins=60, w=w)
            targets.histogram(bins=60, log_x=True, w=w)
            t3 = time.perf_counter()
            targets.per_example(w)
            t4 = time.perf_counter()
            for k, v in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                timings[k].append(v)
    print(f"{len(targets):,} target tokens; loading targets once (cached per run): "
          f"{load_s:.2f} s")
    for k, v in timings.items():
        print(f"new C -> {k:14s}: median {statistics.median(v) * 1000:7.1f} ms "
              f"(max {max(v) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
