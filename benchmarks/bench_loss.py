"""Cost of the weighted loss: each scheme against transformers' plain cross-entropy.

    python benchmarks/bench_loss.py                  # default model, batch 4 x 256, CPU
    python benchmarks/bench_loss.py --batch 8 --seq 512 --device cuda --dtype bfloat16

Two figures per scheme, on the same batch of real SFT rows (GSM8K when
../shared/data/gsm8k exists, else sample_data):

* **step time**: forward + loss + backward of the whole default model. The
  baseline is ``model(..., labels=labels).loss`` (transformers' ForCausalLMLoss);
  the schemes run ``model(...)`` and ``make_loss_func(scheme)(outputs, labels)``.
  Each scheme is timed in a fresh worker process, and the workers alternate
  round by round, so background load hits them alike; the median is printed.
* **peak memory**: on CPU, the worker's peak RSS (ru_maxrss) above its RSS
  right before the first step: what one training step adds on top of the
  loaded model; on CUDA, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
SAMPLE = ROOT / "sample_data" / "sft_sample.jsonl"
SCHEMES = {"ce": {}, "sft": {}, "dft": {}, "infosft": {"P": 0.93}, "profit": {"threshold": 0.1}}


def batch(tokenizer, rows: int, seq: int):
    """``rows`` examples cut to ``seq`` tokens, right-padded: ids, mask, labels ``(B, seq)``."""
    import torch

    from infosft.data import prepare
    from infosft.records import read_records

    data = GSM8K if GSM8K.exists() else SAMPLE
    raw = read_records(str(data), limit=rows)
    _, ex = prepare(raw.rows, tokenizer, max_length=seq)
    ids = torch.full((rows, seq), tokenizer.pad_token_id)
    labels = torch.full((rows, seq), -100)
    mask = torch.zeros((rows, seq), dtype=torch.long)
    for i, e in enumerate(ex):
        n = len(e.tokens.input_ids)
        ids[i, :n], labels[i, :n], mask[i, :n] = (torch.tensor(e.tokens.input_ids),
                                                  torch.tensor(e.tokens.labels()), 1)
    return ids, mask, labels


def worker(scheme: str, args) -> dict:
    """Time ``args.steps`` training steps of one scheme in this process."""
    import torch

    from infosft.loss import make_loss_func
    from infosft.memory import rss_mb
    from infosft.models import load_model

    torch.manual_seed(0)
    model, tok, _ = load_model(device=args.device, dtype=args.dtype)
    model.train()
    ids, mask, labels = (t.to(args.device) for t in batch(tok, args.batch, args.seq))
    loss_fn = None if scheme == "ce" else make_loss_func(scheme, **SCHEMES[scheme])
    cuda = args.device.startswith("cuda")

    def step() -> float:
        t0 = time.perf_counter()
        if loss_fn is None:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        else:
            loss = loss_fn(model(input_ids=ids, attention_mask=mask), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    rss_before = rss_mb()
    step()                                                 # warm-up (allocator, kernels)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(args.steps)]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before)
    return {"scheme": scheme, "step_s": statistics.median(times), "peak_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per worker")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--worker", choices=list(SCHEMES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    passthrough = ["--batch", str(args.batch), "--seq", str(args.seq), "--steps",
                   str(args.steps), "--device", args.device]
    if args.dtype:
        passthrough += ["--dtype", args.dtype]
    results: dict[str, list[dict]] = {s: [] for s in SCHEMES}
    for r in range(args.rounds):
        for scheme in SCHEMES:
            out = subprocess.run([sys.executable, __file__, "--worker", scheme, *passthrough],
                                 cwd=ROOT, check=True, capture_output=True, text=True)
            results[scheme].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    base_t = statistics.median(x["step_s"] for x in results["ce"])
    base_m = statistics.median(x["peak_mb"] for x in results["ce"])
    unit = "MB (CUDA max allocated)" if args.device.startswith("cuda") else "MB (peak RSS above model)"
    print(f"batch {args.batch} x {args.seq} tokens, device {args.device}, median of "
          f"{args.rounds} rounds x {args.steps} steps")
    print(f"{'loss':<16}{'step s':>9}{'x CE':>7}{'peak ' + unit:>36}{'x CE':>7}")
    for scheme, rs in results.items():
        t = statistics.median(x["step_s"] for x in rs)
        m = statistics.median(x["peak_mb"] for x in rs)
        name = "plain CE (HF)" if scheme == "ce" else scheme
        print(f"{name:<16}{t:>9.3f}{t / base_t:>7.3f}{m:>36.0f}{m / base_m:>7.3f}")


if __name__ == "__main__":
    main()
