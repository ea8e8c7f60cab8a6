"""Auto C, checked against a sweep: where does the app's suggested P land among the
InfoSFT runs of a sweep, and how far is it from the learn-vs-forget frontier?

    python benchmarks/auto_c_check.py SWEEP SCORED_RUN

SWEEP is an ``infosft sweep`` directory with InfoSFT grid points at several P; SCORED_RUN
the same training data scored under the base model (``infosft score``), from which the
suggestion is computed exactly as the Tune page computes it. Prints the suggestion, every
run of the sweep (learned, forgot, on the frontier), the InfoSFT run nearest the
suggestion, and its distance to the frontier: how much more another run learned while
forgetting no more (0 when it is on the frontier).
"""

from __future__ import annotations

import sys
from pathlib import Path

from infosft.analysis.stats import Targets
from infosft.analysis.sweep import read_sweep_report, value
from infosft.analysis.tune import auto_c
from infosft.weights import p_from_c


def main(sweep: str, scored: str) -> None:
    auto = auto_c(Targets.from_run(scored))
    print(f"suggestion: P = {auto['P']:.4f} (C = {auto['C']:.3f}); {auto['rule']}")
    runs = read_sweep_report(sweep)["runs"]
    done = [r for r in runs if value(r["learned"]) is not None]
    if not done:
        sys.exit("no evaluated run in the sweep yet")
    print(f"learned: {done[0]['learned_measure']}; forgot: {done[0]['forgot_measure']}")
    for r in done:
        iv = r["learned"]
        print(f"{'*' if r['on_frontier'] else ' '} {Path(r['run']).name:24s} learned "
              f"{iv['value']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]  forgot "
              f"{value(r['forgot']):.3f}")

    def p_of(r):
        k = r["knobs"]
        return k.get("P") or (p_from_c(k["C"]) if "C" in k else 0.93)  # 0.93: the default
    infosft = [r for r in done if r["scheme"] == "infosft"]
    if not infosft:
        return
    near = min(infosft, key=lambda r: abs(p_of(r) - auto["P"]))
    gap = max((value(o["learned"]) - value(near["learned"]) for o in done
               if value(o["forgot"]) <= value(near["forgot"])), default=0.0)
    best = max(infosft, key=lambda r: value(r["learned"]) - value(r["forgot"]))
    print(f"nearest InfoSFT run to the suggestion: {Path(near['run']).name} (P = {p_of(near):.3f})"
          f"; on the frontier: {near['on_frontier']}; another run learned {max(gap, 0):+.3f} "
          "more while forgetting no more")
    print(f"InfoSFT run with the largest learned - forgot: {Path(best['run']).name} "
          f"(P = {p_of(best):.3f})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
