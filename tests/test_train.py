"""Training: real runs (no mocked model) on the tiny Llama for stop / resume / kill, and
one short LoRA run on the embedded default model whose final/ reloads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from infosft import train_status as ts
from infosft.errors import InfosftError, InputError
from infosft.packed_linear import supported
from infosft.train import exported_examples, split_indices, train
from infosft.train_config import resolve
from infosft.trainers import WeightedCollator

from tests.helpers import (HOLD_TRAIN_AT_STEP_2, ROOT, SAMPLE, cli_args, hooked_cli,
                           tiny_cfg, torchrun, write_jsonl)

METRIC_FIELDS = {"step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s",
                 "mean_weight", "zero_weight_share", "q_hist", "weight_share_low",
                 "weight_share_medium", "weight_share_high", "time"}


@pytest.fixture(scope="module")
def short_data(tmp_path_factory) -> Path:
    """16 short plain-text rows: fast steps on the tiny model."""
    rows = [{"text": f"Note {i}: the quick brown fox jumps over the lazy dog {i * 7}."}
            for i in range(16)]
    return write_jsonl(tmp_path_factory.mktemp("data") / "short.jsonl", rows)


def launch(values: dict, *extra: str, hook: str | None = None) -> subprocess.Popen:
    """``infosft train`` in a child process; with ``hook``, the CLI under that test hook."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = ["train", *cli_args(values), *extra]
    argv = hooked_cli(hook, *argv) if hook else [sys.executable, "-m", "infosft", *argv]
    return subprocess.Popen(argv,
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 120.0):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.stdout.read()[-2000:]}")
        time.sleep(0.02)
    pytest.fail("timed out")


# ------------------------------------------------------------------ pieces


def test_collator_pads_right():
    ex = [{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]),
           "weights": torch.tensor([0.0, 0.5, 1.0])},
          {"input_ids": torch.tensor([8]), "labels": torch.tensor([-100]),
           "weights": torch.tensor([0.0])}]
    b = WeightedCollator(2)(ex)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert b["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["weights"].tolist() == [[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]


def test_split_is_seeded_and_disjoint():
    tr, ev = split_indices(40, 0.1, seed=3)
    assert len(ev) == 4 and sorted(tr + ev) == list(range(40))
    assert split_indices(40, 0.1, seed=3) == (tr, ev)
    assert split_indices(40, 0.1, seed=4)[1] != ev
    assert split_indices(5, 0.0, seed=0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(InfosftError, match="eval_split"):
        split_indices(1, 0.5, seed=0)


def test_exported_rows_are_checked(tmp_path):
    from infosft.records import read_records

    good = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "weights": [0, 0.5, 1]}
    bad = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "weights": [0, 0.5]}
    raw = read_records(write_jsonl(tmp_path / "e.jsonl", [good, bad]))
    with pytest.raises(InputError, match=r"e.jsonl, line 2, field 'weights': 2 values for 3"):
        exported_examples(raw, 64, with_weights=True)
    raw = read_records(write_jsonl(tmp_path / "e.jsonl", [good, dict(good, labels="x")]))
    with pytest.raises(InputError, match=r"line 2, field 'labels'"):
        exported_examples(raw, 64, with_weights=True)
    raw = read_records(write_jsonl(tmp_path / "e.jsonl", [good, dict(good, weights=[0, -1, 1])]))
    with pytest.raises(InputError, match=r"line 2, field 'weights': .*>= 0"):
        exported_examples(raw, 64, with_weights=True)


def test_status_detects_a_dead_writer(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    ts.write_status(tmp_path, state="running", pid=proc.pid, step=3)
    s = ts.read_status(tmp_path)
    assert s["state"] == "failed" and f"pid {proc.pid}" in s["error"]
    assert s["resumable"] is False
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / "checkpoint-4").mkdir()  # torn: no trainer_state.json
    assert ts.last_checkpoint(tmp_path).name == "checkpoint-2"
    assert ts.read_status(tmp_path)["resumable"] is True
    ts.write_status(tmp_path, state="running", pid=os.getpid())
    assert ts.read_status(tmp_path)["state"] == "running"  # we are alive


def test_metrics_tolerate_a_torn_line(tmp_path):
    ts.append_metrics(tmp_path, {"step": 1, "loss": 2.0})
    ts.append_metrics(tmp_path, {"step": 2, "loss": 1.5})
    with open(tmp_path / ts.METRICS, "a") as f:
        f.write('{"step": 3, "lo')
    assert [m["step"] for m in ts.read_metrics(tmp_path)] == [1, 2]
    ts.truncate_metrics(tmp_path, 1)
    assert ts.read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]


def test_static_needs_an_export_and_out_is_never_overwritten(tmp_path, short_data,
                                                              tiny_model_dir):
    cfg = resolve(tiny_cfg(short_data, tmp_path / "r", tiny_model_dir, mode="static"))
    with pytest.raises(InfosftError, match="'mode': static weights need a dataset written by"):
        train(cfg)
    assert not (tmp_path / "r").exists()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("x")
    with pytest.raises(InfosftError, match="already exists; use --resume .* or --overwrite"):
        train(resolve(tiny_cfg(short_data, tmp_path / "r", tiny_model_dir)))
    assert (tmp_path / "r" / "keep.txt").exists()


# ------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_lora_on_default_model_reloads_merged(tmp_path, default_model):
    """A short LoRA run of the embedded model: metrics, status, final/ that reloads with
    the adapter merged (weights differ from the base)."""
    from infosft.models import load_model

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:16]]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = resolve({"data": str(data), "out": str(tmp_path / "run"), "max_steps": 3,
                   "batch_size": 2, "max_length": 128, "logging_steps": 1, "eval_split": 0.125,
                   "device": "cpu", "lr": 1e-3})
    run = train(cfg)
    status = ts.read_status(run)
    assert status["state"] == "finished" and status["step"] == 3 and status["total_steps"] == 3
    assert status["final_model"] == str(run / "final") and status["error"] is None
    metrics = ts.read_metrics(run)
    train_lines = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_lines] == [1, 2, 3]
    for m in train_lines:
        assert set(m) == METRIC_FIELDS and all(v is not None for v in m.values()), m
        assert 0 < m["mean_weight"] < 1 and 0 <= m["zero_weight_share"] < 1
        assert m["tokens_per_s"] > 0
    evals = [m for m in metrics if "eval_loss" in m]
    assert len(evals) == 1 and "loss" not in evals[0] and evals[0]["eval_loss"] > 0
    assert len((run / ts.EVAL_DATA).read_text().splitlines()) == 2
    info = json.loads((run / "final" / ts.MODEL_INFO).read_text())
    assert info["adapter"] is True and info["base_model"] is None

    merged, tok, minfo = load_model(str(run / "final"), device="cpu")
    base = default_model[0]
    assert minfo.name == str(run / "final") and minfo.revision.startswith("sha256:")
    w_merged = merged.model.layers[0].self_attn.q_proj.weight
    w_base = base.model.layers[0].self_attn.q_proj.weight
    assert w_merged.shape == w_base.shape and not torch.equal(w_merged, w_base)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert tok("hello")["input_ids"] == default_model[1]("hello")["input_ids"]


@pytest.mark.slow
def test_sigterm_stops_and_resume_continues_in_order(tmp_path, short_data, tiny_model_dir):
    """SIGTERM -> checkpoint + "stopped"; --resume finishes with the losses of an
    uninterrupted run at every step (same data order, optimizer and scheduler). The run
    waits at the end of step 2 for the signal (a test hook), so it stops exactly there."""
    from infosft.app.cli import main

    values = tiny_cfg(short_data, tmp_path / "stopped", tiny_model_dir)
    proc = launch(values, hook=HOLD_TRAIN_AT_STEP_2)
    wait_for(lambda: (ts.read_status(values["out"]).get("step") or 0) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    status = ts.read_status(values["out"])
    assert status["state"] == "stopped" and status["resumable"] is True, status
    ckpt = ts.last_checkpoint(values["out"])
    stop_step = ts.checkpoint_step(ckpt)
    assert status["last_checkpoint"] == str(ckpt) and stop_step == 2
    assert "--resume" in out

    # A result-affecting change is refused; a logging one is fine.
    assert main(["train", "--out", values["out"], "--resume", "--lr", "0.5"]) == 2
    assert main(["train", "--out", values["out"], "--resume", "--logging-steps", "1"]) == 0
    status = ts.read_status(values["out"])
    assert status["state"] == "finished" and status["step"] == 16
    resumed = [m for m in ts.read_metrics(values["out"]) if "loss" in m]
    assert [m["step"] for m in resumed] == list(range(1, 17))  # no step twice

    ref = train(resolve(tiny_cfg(short_data, tmp_path / "straight", tiny_model_dir)))
    straight = [m for m in ts.read_metrics(ref) if "loss" in m]
    assert [m["loss"] for m in resumed] == pytest.approx([m["loss"] for m in straight],
                                                         rel=1e-5)
    assert [m["learning_rate"] for m in resumed] == pytest.approx(
        [m["learning_rate"] for m in straight])
    # The loss moves (so a different data order would show).
    assert len({round(m["loss"], 4) for m in straight}) > 8


@pytest.mark.slow
def test_sigkill_is_failed_and_resumable(tmp_path, short_data, tiny_model_dir):
    """Killed mid-run (parked at the end of step 2 by a test hook, its step-1 checkpoint
    written): the status says failed, resumable from that checkpoint."""
    values = tiny_cfg(short_data, tmp_path / "killed", tiny_model_dir, save_steps=1,
                      max_steps=40)
    proc = launch(values, hook=HOLD_TRAIN_AT_STEP_2)
    wait_for(lambda: ts.read_status(values["out"])["last_checkpoint"], proc)
    proc.kill()
    # Before the parent reaps it, the process is a zombie: already reported dead.
    s = wait_for(lambda: (lambda s: s if s["state"] != "running" else None)(
        ts.read_status(values["out"])), timeout=10)
    assert s["state"] == "failed" and "died without finishing" in s["error"], s
    proc.wait()
    s = ts.read_status(values["out"])
    assert s["state"] == "failed" and s["resumable"] is True
    assert s["last_checkpoint"] == str(ts.last_checkpoint(values["out"]))


@pytest.mark.slow
def test_static_weights_from_an_export(tmp_path, tiny_run, tiny_model_dir):
    """Static mode takes the export's weights: ProFit random drops half the tokens."""
    from infosft.analysis.export import export_weighted

    export = export_weighted(tiny_run.path, tmp_path / "w.parquet", "profit",
                             direction="random", threshold=0.5, seed=1)
    cfg = resolve({"data": str(export), "out": str(tmp_path / "run"), "model": str(tiny_model_dir),
                   "mode": "static", "scheme": "profit", "max_steps": 2, "batch_size": 4,
                   "logging_steps": 2, "max_length": 256, "device": "cpu", "eval_split": 0.1})
    run = train(cfg)
    assert ts.read_status(run)["state"] == "finished"
    [m] = [m for m in ts.read_metrics(run) if "loss" in m]
    assert 0.3 < m["zero_weight_share"] < 0.7
    assert m["mean_weight"] == pytest.approx(1 - m["zero_weight_share"])
    source = json.loads((run / "data" / "source.json").read_text())
    assert source["kind"] == "exported" and source["export_meta"]["scheme"] == "profit"
    assert not (run / ts.EVAL_DATA).exists()  # only raw datasets write eval records
    assert "older target rule" not in (run / ts.LOG).read_text()


def test_an_export_made_under_the_old_target_rule_is_flagged(tmp_path, tiny_run, tiny_model_dir):
    """Exports made before the targets followed TRL's rule carry no ``targets``: they
    still train (their labels and weights agree with each other), with a warning."""
    import polars as pl

    from infosft.analysis.export import export_weighted
    from infosft.export_format import parquet_metadata, read_meta, sidecar

    export = export_weighted(tiny_run.path, tmp_path / "w.parquet", "sft")
    meta = read_meta(export)
    del meta["targets"]
    old = tmp_path / "old.parquet"  # the same rows, with the metadata of an older export
    pl.read_parquet(export).write_parquet(old, metadata=parquet_metadata(meta))
    sidecar(old).write_text(json.dumps(meta))
    assert read_meta(old) == meta
    cfg = resolve({"data": str(old), "out": str(tmp_path / "run"), "model": str(tiny_model_dir),
                   "mode": "static", "scheme": "sft", "max_steps": 1, "batch_size": 4,
                   "max_length": 256, "device": "cpu", "eval_split": 0})
    run = train(cfg)
    assert ts.read_status(run)["state"] == "finished"
    assert "the export was made under an older target rule" in (run / ts.LOG).read_text()


@pytest.mark.slow
def test_gradient_accumulation_matches_one_big_batch(tmp_path, short_data, tiny_model_dir):
    """Loss normalized by the tokens of the whole optimizer step: batch 1 x 2 accumulated
    micro-batches logs the same loss and gradient norm as batch 2 (no double scaling)."""
    runs = [train(resolve(tiny_cfg(short_data, tmp_path / name, tiny_model_dir, max_steps=3,
                                   batch_size=bs, grad_accum=ga)))
            for name, bs, ga in (("big", 2, 1), ("accum", 1, 2))]
    big, accum = ([m for m in ts.read_metrics(r) if "loss" in m] for r in runs)
    assert [m["loss"] for m in accum] == pytest.approx([m["loss"] for m in big], rel=1e-4)
    assert [m["grad_norm"] for m in accum] == pytest.approx([m["grad_norm"] for m in big],
                                                            rel=1e-3)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path, tiny_model_dir):
    """Data-parallel under the standard launcher: 2 ranks x batch 2 give the gradient of
    one process with batch 4. The rows differ in length, so the ranks hold different
    token counts and only a loss normalized by the tokens of all ranks agrees."""
    rows = [{"text": " ".join(["word"] * n)} for n in (3, 12, 40, 90)]
    data = write_jsonl(tmp_path / "uneven.jsonl", rows)
    values = tiny_cfg(data, tmp_path / "one", tiny_model_dir, max_steps=1, batch_size=4)
    one = subprocess.run([sys.executable, "-m", "infosft", "train", *cli_args(values)],
                         cwd=ROOT, capture_output=True, text=True)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    values = {**values, "out": str(tmp_path / "two"), "batch_size": 2}
    two = subprocess.run(torchrun(2, "-m", "infosft", "train", *cli_args(values)),
                         cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    (m1,), (m2,) = ([m for m in ts.read_metrics(tmp_path / d) if "loss" in m]
                    for d in ("one", "two"))
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    assert ts.read_status(tmp_path / "two")["state"] == "finished"


def test_lora_step_one_loss_is_the_plain_nll_of_the_whole_batch(tmp_path, tiny_model_dir):
    """infosft train's fast path (padding-free rows, each document's attention alone, the
    vocabulary projection only at targets, packed frozen weights, fast dropout masks)
    changes no number: its step-1 loss is the NLL of the batch's targets, written out here
    example by example from a float64 forward with full logits. (LoRA's B starts at 0, so
    dropout cannot move step 1.)"""
    from transformers import AutoModelForCausalLM

    from infosft.data import prepare
    from infosft.models import load_tokenizer

    rows = [{"prompt": "q " * n, "response": "answer " * m}
            for n, m in ((3, 9), (14, 2), (6, 6), (1, 20))]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = resolve(tiny_cfg(data, tmp_path / "run", tiny_model_dir, lora=True, max_steps=1,
                           batch_size=4, lora_dropout=0.3))
    run = train(cfg)
    log = (run / ts.LOG).read_text()
    assert "padding-free, each document's attention alone; 14 LoRA dropouts" in log
    if supported():  # the LoRA base layers and the (tied, frozen) LM head
        assert "15 frozen linear layers on oneDNN packed weights" in log
    line = next(m for m in ts.read_metrics(run) if "loss" in m)
    loss = line["loss"]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    _, examples = prepare(enumerate(rows, 1), load_tokenizer(str(tiny_model_dir)),
                          max_length=cfg.max_length)
    total, n, qs = 0.0, 0, []
    for ex in examples:
        ids = torch.tensor(ex.tokens.input_ids)
        with torch.no_grad():
            logp = model(ids[None]).logits[0, :-1].log_softmax(-1)
        mask = torch.tensor(ex.tokens.target_mask[1:])
        target = logp[mask].gather(1, ids[1:][mask, None])
        total -= target.sum().item()
        qs.append(target.exp().flatten().numpy())
        n += int(mask.sum())
    assert n > 0 and loss == pytest.approx(total / n, rel=1e-5)
    # the step's picture: every target counted once in the logged q histogram
    want, _ = np.histogram(np.concatenate(qs), bins=20, range=(0.0, 1.0))
    assert line["q_hist"] == want.tolist() and sum(line["q_hist"]) == n
