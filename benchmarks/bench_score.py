"""Scoring speed and memory: infosft's scorer against a naive transformers loop.

    python benchmarks/bench_score.py                 # 100 GSM8K rows: tokens/s of both, ratio
    python benchmarks/bench_score.py --rows 0        # the scorer alone on every row: peak RSS
    python benchmarks/bench_score.py --rows 0 --tiny-model   # same data, a 2-layer random
        # model with the same tokenizer: what grows with the dataset, in minutes, not an hour

The naive loop is what one writes first: one example at a time, the full forward
(logits for every position) and a full fp32 log-softmax. Scorer and naive loop
alternate for a few rounds in one process (same model, same token ids, so
background load hits both alike) and the median ratio is printed. Then the
scorer runs once more as a CLI subprocess, whose peak RSS (ru_maxrss of the
child) is the whole process: model, data, parts.
Uses ../shared/data/gsm8k/train.jsonl when present, else sample_data/.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
SAMPLE = ROOT / "sample_data" / "sft_sample.jsonl"


def tiny_model(path: Path) -> Path:
    """A 2-layer random Llama with the default tokenizer (same tokens, ~3 MB of weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from infosft.models import load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, tie_word_embeddings=True)
                     ).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_scorer(data: Path, rows: int, out: Path, model: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "infosft", "score", str(data), "--out", str(out), "--quiet"]
    if model:
        cmd += ["--model", str(model)]
    if rows:
        cmd += ["--limit", str(rows)]
    subprocess.run(cmd, cwd=ROOT, check=True)
    meta = json.loads((out / "meta.json").read_text())
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"tokens": meta["counts"]["tokens"], "tokens_per_s": meta["tokens_per_s"],
            "seconds": meta["scoring_seconds"], "peak_rss_mb": peak_mb}


def run_in_process(data: Path, rows: int, out: Path) -> dict:
    """The scorer's own timing (scoring loop incl. Parquet writes, excl. model load)."""
    from infosft.analysis.score import ScoreConfig, score_dataset

    run = score_dataset(ScoreConfig(source=str(data), out=str(out), limit=rows),
                        overwrite=True, progress=False)
    meta = run.meta()
    return {"tokens": meta["counts"]["tokens"], "tokens_per_s": meta["tokens_per_s"]}


def run_naive(data: Path, rows: int, model=None, tokenizer=None) -> dict:
    import torch

    from infosft.data import prepare
    from infosft.records import read_records

    raw = read_records(data, limit=rows or None)
    _, examples = prepare(raw.rows, tokenizer, max_length=2048)
    n = sum(ex.tokens.n_tokens for ex in examples)
    with torch.inference_mode():
        model(input_ids=torch.tensor([examples[0].tokens.input_ids]))  # warm-up
        t0 = time.perf_counter()
        for ex in examples:
            ids = torch.tensor([ex.tokens.input_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
            logp[0, :-1].gather(1, ids[0, 1:, None])
        seconds = time.perf_counter() - t0
    return {"tokens": n, "tokens_per_s": n / seconds, "seconds": seconds}


def compare(data: Path, rows: int, rounds: int) -> None:
    """Alternate scorer and naive loop so background load hits both alike; median ratio."""
    import statistics

    from infosft.models import load_model

    model, tokenizer, _ = load_model()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            ours = run_in_process(data, rows, Path(tmp) / "run")
            naive = run_naive(data, rows, model, tokenizer)
            ratios.append(ours["tokens_per_s"] / naive["tokens_per_s"])
            print(f"round {r + 1}: infosft scorer {ours['tokens_per_s']:7.1f} tokens/s, "
                  f"naive loop {naive['tokens_per_s']:7.1f} tokens/s, "
                  f"ratio {ratios[-1]:.2f}x  ({ours['tokens']} tokens)", flush=True)
    print(f"speed-up (median of {rounds}): {statistics.median(ratios):.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=GSM8K if GSM8K.exists() else SAMPLE)
    p.add_argument("--rows", type=int, default=100, help="0 = all rows, scorer only (memory)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tiny-model", action="store_true",
                   help="score with a tiny random model (memory growth with the dataset)")
    args = p.parse_args()
    print(f"data: {args.data} ({'all' if not args.rows else args.rows} rows)")
    # The subprocess first: a child's ru_maxrss counts the parent's pages it was forked
    # with, so it must be forked before this process loads a model.
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny") if args.tiny_model else None
        scorer = run_scorer(args.data, args.rows, Path(tmp) / "run", model)
    print(f"scorer process{' (tiny model)' if model else ''}: {scorer['tokens']} tokens at "
          f"{scorer['tokens_per_s']:.1f} tokens/s, peak RSS {scorer['peak_rss_mb']:.0f} MB",
          flush=True)
    if args.rows and not args.tiny_model:
        compare(args.data, args.rows, args.rounds)


if __name__ == "__main__":
    main()
