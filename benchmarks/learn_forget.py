"""Learned vs forgot, one run per scheme: the trade-off figures of docs/benchmarks.md.

    python benchmarks/learn_forget.py                       # GSM8K rows, default model, CPU
    python benchmarks/learn_forget.py --rows 2000 --epochs 2 --full   # a bigger study

Trains the default model with LoRA once per scheme on the same rows (same seed, so
the same held-out split and data order), then evaluates all runs in one
``infosft eval`` call (the base model's scores are computed once and shared), and
prints one line per run: training time, learned (task NLL and q), forgot (prior NLL
and KL(base || tuned)) and greedy exact-match accuracy on held-out problems.

Everything goes through the ``infosft`` CLI, as a user would run it; the runs land in
``OUT/trainings/`` so that ``INFOSFT_WORKSPACE=OUT infosft app`` shows them on the
Train and Evaluate pages.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
SAMPLE = ROOT / "sample_data" / "sft_sample.jsonl"
KNOBS = {"sft": [], "dft": [], "infosft": ["--P", "0.93"], "profit": ["--threshold", "0.1"]}


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "infosft", *args], cwd=ROOT, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(GSM8K if GSM8K.exists() else SAMPLE))
    p.add_argument("--rows", type=int, default=240)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--schemes", nargs="+", default=list(KNOBS), choices=list(KNOBS))
    p.add_argument("--accuracy-limit", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    p.add_argument("--out", default="/tmp/infosft-learn-forget")
    args = p.parse_args()

    trainings = Path(args.out) / "trainings"
    runs, seconds = [], {}
    for scheme in args.schemes:
        run = trainings / scheme
        t0 = time.time()
        cli("train", "--data", args.data, "--limit", str(args.rows), "--scheme", scheme,
            *KNOBS[scheme], "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--max-length", str(args.max_length), "--eval-split", "0.1", "--logging-steps", "5",
            "--seed", "0", *(["--lr", str(args.lr)] if args.lr else []),
            *(["--no-lora"] if args.full else []), "--out", str(run), "--overwrite")
        seconds[scheme] = time.time() - t0
        runs.append(run)
    t0 = time.time()
    cli("eval", *map(str, runs), "--accuracy-limit", str(args.accuracy_limit),
        "--max-new-tokens", str(args.max_new_tokens), "--overwrite")
    eval_s = time.time() - t0

    print(f"\n{args.rows} rows of {Path(args.data).name}, {args.epochs:g} epoch(s), "
          f"{'full fine-tune' if args.full else 'LoRA'}, default model; eval {eval_s:.0f} s")
    print(f"{'scheme':<9}{'train s':>8}{'task dNLL':>11}{'task dq':>9}{'prior dNLL':>12}"
          f"{'prior KL':>10}{'accuracy':>15}")
    for scheme, run in zip(args.schemes, runs):
        rep = json.loads((run / "eval" / "report.json").read_text())
        learned, forgot, acc = rep["learned"], rep["forgot"], rep.get("accuracy")
        acc_text = f"{acc['base']:.0%} -> {acc['tuned']:.0%}" if acc else "-"
        print(f"{scheme:<9}{seconds[scheme]:>8.0f}{learned['delta_nll']:>+11.4f}"
              f"{learned['delta_q']:>+9.4f}{forgot['delta_nll']:>+12.4f}"
              f"{forgot['mean_kl']:>10.4f}{acc_text:>15}")


if __name__ == "__main__":
    main()
