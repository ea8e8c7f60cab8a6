"""Training throughput: ``infosft train`` against TRL, on the same data, in one run.

    python benchmarks/bench_train.py                 # default model, LoRA, 48 GSM8K rows
    python benchmarks/bench_train.py --steps 8 --batch-size 8 --device cuda --bf16
    python benchmarks/bench_train.py --baseline c9b7829   # + infosft train at that commit

Four trainers, each in a fresh worker process (so each peak RSS is its own), all with
the same rows (GSM8K when ../shared/data/gsm8k exists, else sample_data), the same
LoRA (r 16, alpha 32, dropout 0.05, all linear layers), batch size, learning rate,
``max_length`` and seed:

* ``infosft train`` (:func:`infosft.train.train`, scheme ``sft``);
* ``WeightedSFTTrainer`` (``infosft.trainers``, scheme ``sft``) on TRL's conversational
  prompt-completion rows;
* TRL's own ``SFTTrainer(loss_type="nll")`` on the same rows;
* TRL's ``SFTTrainer`` with ``compute_loss_func=make_loss_func("sft")``;
* with ``--baseline REV``, ``infosft train`` as it was at commit ``REV`` (its tree from
  ``git archive``, imported ahead of the installed package), for a before/after ratio.

Throughput is the tokens the model reads (non-pad input tokens) per second of
``training_step``, the first step left out (warm-up). Peak RSS is the worker's
``ru_maxrss``. Each worker also prints its step-1 loss, so the plain SFT losses can be
compared. The ratios are against TRL's ``nll`` run of the same invocation: timings on a
shared machine drift, ratios within one run much less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
SAMPLE = ROOT / "sample_data" / "sft_sample.jsonl"
KINDS = ("infosft-train", "weighted-sft-trainer", "trl-nll", "trl-compute-loss-func")


def rows(n: int) -> list[tuple[str, str]]:
    """(question, answer) pairs of the first ``n`` rows."""
    path = GSM8K if GSM8K.exists() else SAMPLE
    out = []
    for line in path.read_text().splitlines()[:n]:
        r = json.loads(line)
        out.append((r.get("question", r.get("prompt")), r.get("answer", r.get("response"))))
    return out


def timed_steps(trainer_cls):
    """Records (tokens read, seconds, loss) of each ``training_step``."""
    record: list[tuple[int, float, float]] = []
    original = trainer_cls.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        mask = inputs.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        start = time.perf_counter()
        loss = original(self, model, inputs, *args, **kwargs)
        record.append((tokens, time.perf_counter() - start, float(loss)))
        return loss

    trainer_cls.training_step = training_step
    return record


def worker(kind: str, opts: dict) -> dict:
    from transformers import Trainer

    record = timed_steps(Trainer)
    pairs = rows(opts["rows"])
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-train-{kind}-"))
    lora = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    if kind == "infosft-train":
        from infosft.train import train
        from infosft.train_config import resolve

        data = tmp / "data.jsonl"
        data.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n"
                                for q, a in pairs))
        train(resolve({"data": str(data), "out": str(tmp / "run"), "scheme": "sft",
                       "lora": True, "lr": 2e-4, "max_steps": opts["steps"],
                       "batch_size": opts["batch_size"], "max_length": opts["max_length"],
                       "eval_split": 0, "logging_steps": 1, "seed": 0,
                       "device": opts["device"],
                       "dtype": "bfloat16" if opts["bf16"] else "float32"}, {}))
    else:
        import datasets
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        from infosft.loss import make_loss_func
        from infosft.models import load_model
        from infosft.trainers import WeightedSFTTrainer

        model, tokenizer, _ = load_model(device=opts["device"],
                                         dtype="bfloat16" if opts["bf16"] else "float32")
        data = datasets.Dataset.from_list([
            {"prompt": [{"role": "user", "content": q}],
             "completion": [{"role": "assistant", "content": a}]} for q, a in pairs])
        cpu = opts["device"] == "cpu"
        args = SFTConfig(output_dir=str(tmp / "out"), max_steps=opts["steps"],
                         per_device_train_batch_size=opts["batch_size"], learning_rate=2e-4,
                         max_length=opts["max_length"], logging_steps=1, save_strategy="no",
                         report_to=[], seed=0, use_cpu=cpu, bf16=opts["bf16"],
                         gradient_checkpointing=False, loss_type="nll")
        common = dict(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                      peft_config=LoraConfig(task_type="CAUSAL_LM", **lora))
        if kind == "weighted-sft-trainer":
            trainer = WeightedSFTTrainer(scheme="sft", **common)
        elif kind == "trl-nll":
            trainer = SFTTrainer(**common)
        else:
            trainer = SFTTrainer(compute_loss_func=make_loss_func("sft"), **common)
        trainer.train()
    steady = record[1:] or record
    tokens, seconds = sum(r[0] for r in steady), sum(r[1] for r in steady)
    return {"kind": kind, "tokens_per_s": tokens / seconds, "steps": len(record),
            "step1_loss": record[0][2] if record else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--only", choices=KINDS, action="append", help="run only these")
    p.add_argument("--baseline", metavar="REV",
                   help="also run infosft train at this git commit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    opts = {k: getattr(args, k) for k in ("rows", "steps", "batch_size", "max_length",
                                          "device", "bf16")}
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, opts)), flush=True)
        return
    results = {}
    runs = [(kind, kind, ROOT) for kind in args.only or KINDS]
    if args.baseline:
        # The old tree sits beside a link to ../shared, so its script finds the same rows.
        old = Path(tempfile.mkdtemp(prefix="bench-train-baseline-")) / ROOT.name
        old.mkdir()
        if (ROOT.parent / "shared").exists():
            (old.parent / "shared").symlink_to(ROOT.parent / "shared")
        archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        runs.insert(0, (f"infosft-train@{args.baseline}", "infosft-train", old))
    for name, kind, tree in runs:
        argv = [sys.executable, str(tree / "benchmarks" / "bench_train.py"), "--worker", kind,
                *_forwarded(sys.argv[1:])]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        where = subprocess.run([sys.executable, "-c", "import infosft; print(infosft.__file__)"],
                               capture_output=True, text=True, cwd=tree, env=env).stdout.strip()
        if not where or Path(where).resolve().parents[1] != tree.resolve():
            print(f"{name}: imports infosft from {where or '?'}, not {tree}", file=sys.stderr)
            continue
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=tree, env=env)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = r = json.loads(line[-1][len("RESULT "):])
        print(f"{name:24s} {r['tokens_per_s']:8.1f} tokens/s  peak RSS {r['peak_rss_mb']:7.0f} MB"
              f"  step-1 loss {r['step1_loss']:.4f}  ({r['steps']} steps)", flush=True)
    base = results.get("trl-nll")
    if base:
        print("vs TRL SFTTrainer(loss_type='nll'):")
        for kind, r in results.items():
            print(f"  {kind:24s} speed {r['tokens_per_s'] / base['tokens_per_s']:.2f}x  "
                  f"peak RSS {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x")
    before = results.get(f"infosft-train@{args.baseline}")
    if before and "infosft-train" in results:
        print(f"infosft train vs {args.baseline}: speed "
              f"{results['infosft-train']['tokens_per_s'] / before['tokens_per_s']:.2f}x  peak RSS "
              f"{results['infosft-train']['peak_rss_mb'] / before['peak_rss_mb']:.2f}x")


def _forwarded(argv: list[str]) -> list[str]:
    """The options a worker takes (not --only/--baseline: an older script may lack them)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--only", "--baseline"):
            skip = True
        elif not a.startswith(("--only=", "--baseline=")):
            out.append(a)
    return out


if __name__ == "__main__":
    main()
