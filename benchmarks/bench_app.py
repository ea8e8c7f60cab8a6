"""How long a slider move takes in the app on a run with >= 1 million target tokens.

    python benchmarks/bench_app.py [--examples 5000] [--targets-per-example 250] [--repeats 5]

Builds a synthetic scored run (``analysis.synthetic``: real layout, top-k lists and
all), loads it once the way the app caches it (``Targets`` + bin indices), then times
a move of the C slider through the same functions the pages call:

* tune      ``analysis.tune.tune_view`` (weights of all four schemes, summary, weighted
            histograms, curves) + metric cards + both Plotly figures serialized to JSON
            (what is sent to the browser);
* examples  ``analysis.table.examples_view`` (the Examples table under the new C);
* tokens    ``analysis.view.token_view`` + ``app.render.token_html`` for one example;
* page      the whole Tune page script under Streamlit's AppTest after a slider change
            (server side: everything but the browser's drawing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infosft.analysis.stats import Targets  # noqa: E402
from infosft.analysis.synthetic import make_run  # noqa: E402
from infosft.analysis.table import examples_view  # noqa: E402
from infosft.analysis.tune import Settings, tune_view  # noqa: E402
from infosft.analysis.view import token_view  # noqa: E402
from infosft.app import charts  # noqa: E402
from infosft.app.render import scheme_labels, summary_cards, token_html  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    out = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def page_timings(run_path: Path, repeats: int) -> list[float]:
    """Tune page reruns after C slider moves, under AppTest (cache warmed first)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.session_state["run_path"] = str(run_path)
    at.run()
    at.switch_page("views/tune.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]

    def move(i):
        at.slider(key="tune_C").set_value(1.0 + 0.37 * (i + 1)).run()
        assert not at.exception
    return timed(move, repeats)


def fmt(ts: list[float]) -> str:
    return f"median {statistics.median(ts) * 1000:7.1f} ms   max {max(ts) * 1000:7.1f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=5000)
    p.add_argument("--targets-per-example", type=int, default=250)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-page", action="store_true", help="skip the AppTest page timing")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("INFOSFT_WORKSPACE", str(Path(tmp) / "ws"))
        t0 = time.perf_counter()
        run = make_run(Path(tmp) / "run", n_examples=args.examples,
                       target_tokens=args.targets_per_example)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        targets = Targets.from_run(run)
        for log_x in (False, True):
            targets.histogram(bins=50, log_x=log_x)
        examples, vocab = run.read_examples(), run.read_vocab()
        load_s = time.perf_counter() - t0
        print(f"synthetic run: {args.examples:,} examples, {len(targets):,} target tokens "
              f"(built in {build_s:.1f} s); load once per run (cached): {load_s:.2f} s")

        def tune(i):
            s = Settings(C=1.0 + 0.37 * i)
            v = tune_view(targets, s, bins=50)
            summary_cards(v["summary"])
            charts.q_histogram_with_curves(v["hist"], v["curves"], log_x=False,
                                           labels=scheme_labels(s)).to_json()
            charts.weight_share_histogram(v["hist"], log_x=False,
                                          labels=scheme_labels(s)).to_json()

        def table(i):
            s = Settings(C=1.0 + 0.37 * i)
            examples_view(targets, examples, s.scheme, s.knobs(), sort_by="mean_q")

        def tokens(i):
            s = Settings(C=1.0 + 0.37 * i)
            token_html(token_view(run, (i * 997) % args.examples, targets, vocab, s), "q")

        rows = {"tune (metrics + charts)": timed(tune, args.repeats),
                "examples table": timed(table, args.repeats),
                "token view (1 example)": timed(tokens, args.repeats)}
        if not args.no_page:
            rows["Tune page, AppTest rerun"] = page_timings(run.path, args.repeats)
        width = max(map(len, rows))
        for name, ts in rows.items():
            print(f"{name:<{width}}  {fmt(ts)}")
        worst = max(max(ts) for ts in rows.values())
        print(f"slowest single update: {worst * 1000:.0f} ms "
              f"({'under' if worst < 1 else 'OVER'} the 1 s target)")


if __name__ == "__main__":
    main()
