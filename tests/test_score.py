"""Scoring: the real default model against an independent forward pass, batching
helpers, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from infosft.analysis.score import ScoreConfig, score_dataset
from infosft.analysis.store import Run
from infosft.scoring import Scorer, batches_by_budget, shared_prefix, target_stats
from tests.helpers import (ROOT, SAMPLE, SAMPLE_RUN, hold_score_after_part, hooked_cli,
                           torchrun, wait_parked, write_jsonl)

ROWS = [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def test_batches_by_budget_respects_budget_and_covers_all():
    lengths = [5, 100, 30, 30, 7, 64, 64, 1, 200]
    batches = batches_by_budget(lengths, budget=128)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 128
    assert [200] in [[lengths[i] for i in b] for b in batches]  # over-long: alone


def test_shared_prefix_stops_before_first_target(tokenizer):
    from infosft.data import prepare

    _, exs = prepare(enumerate(ROWS[:4], 1), tokenizer, max_length=512)
    prefix = shared_prefix(exs)
    first_target = min(ex.tokens.target_mask.index(True) for ex in exs)
    assert 0 < len(prefix) <= first_target - 1
    assert all(ex.tokens.input_ids[:len(prefix)] == prefix for ex in exs)
    # the system prompt and the user header are shared; the user text is not
    assert tokenizer.decode(prefix).endswith("<|im_start|>user\n")


def _independent_scores(model, tokenizer, row) -> dict[str, np.ndarray]:
    """Plain transformers: template -> ids, full forward, float64 log-softmax."""
    msgs = [{"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]}]
    ids = tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False),
                    add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp_all = torch.log_softmax(logits[:-1], -1)             # row p predicts token p + 1
    y = torch.tensor(ids[1:])
    logp = logp_all.gather(1, y[:, None]).squeeze(1)
    return {"ids": np.array(ids), "logp": np.r_[np.nan, logp.numpy()],
            "entropy": np.r_[np.nan, -(logp_all.exp() * logp_all).sum(-1).numpy()],
            "rank": np.r_[0, ((logp_all > logp[:, None]).sum(-1) + 1).numpy()],
            "top_ids": np.vstack([np.zeros(5, int), logp_all.topk(5).indices.numpy()])}


@pytest.mark.slow
def test_default_model_scores_match_plain_forward(tmp_path, default_model):
    model, tokenizer, _ = default_model
    rows = ROWS[:3]
    data = write_jsonl(tmp_path / "three.jsonl", rows)
    run = score_dataset(ScoreConfig(source=str(data), out=str(tmp_path / "run"), device="cpu"),
                        progress=False)
    tokens = run.scan_tokens().sort("example_id", "position").collect()
    assert run.meta()["status"] == "complete"
    for ex_id, row in enumerate(rows):
        ref = _independent_scores(model, tokenizer, row)
        got = tokens.filter(pl.col("example_id") == ex_id)
        assert got["token_id"].to_list() == ref["ids"].tolist()
        tgt = got["is_target"].to_numpy()
        # targets = TRL's: the response, <|im_end|> and the template's "\n", up to the end
        assert tokenizer.decode(ref["ids"][tgt]) == row["response"] + "<|im_end|>\n"
        assert tgt[-1] and tokenizer.decode(ref["ids"][-2:]) == "<|im_end|>\n"
        np.testing.assert_allclose(got["logp"].to_numpy()[tgt], ref["logp"][tgt], atol=2e-4)
        np.testing.assert_allclose(got["entropy"].to_numpy()[tgt], ref["entropy"][tgt],
                                   atol=1e-3)  # a float32 sum over 49k vocabulary entries
        # ranks and top-k can only differ where two logits tie within float error
        assert (got["rank"].to_numpy()[tgt] == ref["rank"][tgt]).mean() > 0.99
        top = np.vstack(got.filter(pl.col("is_target"))["top_ids"].to_list())
        assert (top[:, 0] == ref["top_ids"][tgt][:, 0]).mean() > 0.99
        assert got.filter(~pl.col("is_target"))["logp"].null_count() == (~tgt).sum()
    meta = run.meta()
    assert meta["counts"]["examples"] == 3 and meta["tokens_per_s"] > 0
    assert meta["model"]["revision"].startswith("sha256:")


@pytest.mark.slow
def test_bundled_sample_run_still_matches(tmp_path, default_model):
    """The pre-scored sample run the app opens on agrees with scoring its data now."""

    bundled = Run(SAMPLE_RUN)
    meta = bundled.meta()
    assert meta["status"] == "complete"
    assert meta["counts"]["examples"] == len(ROWS)
    rows = ROWS[:3]
    run = score_dataset(ScoreConfig(source=str(write_jsonl(tmp_path / "d.jsonl", rows)),
                                    out=str(tmp_path / "run"), device="cpu",
                                    max_length=meta["max_length"]), progress=False)
    fresh = run.scan_tokens().sort("example_id", "position").collect()
    old = (bundled.scan_tokens().filter(pl.col("example_id") < 3)
           .sort("example_id", "position").collect())
    assert fresh["token_id"].to_list() == old["token_id"].to_list()
    assert fresh["is_target"].to_list() == old["is_target"].to_list()
    np.testing.assert_allclose(fresh["logp"].to_numpy(), old["logp"].to_numpy(), atol=1e-3)


def _score_cmd(data, out, model, *extra):
    return [sys.executable, "-m", "infosft", "score", str(data), "--out", str(out),
            "--model", str(model), "--quiet", "--token-budget", "1024", "--part-tokens", "1500",
            *extra]


@pytest.mark.slow
def test_resume_after_sigkill_has_no_duplicate_and_no_missing(tmp_path, tiny_model_dir):
    """SIGKILLed mid-run (parked after its second part by a test hook, so never after it
    finished): --resume completes it with every token once and the scores of a clean run
    (40 rows: 4-5 parts of 1,500 tokens, so the kill leaves parts both written and not)."""
    rows = ROWS[:40]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "run"
    proc = subprocess.Popen(hooked_cli(hold_score_after_part(2),
                                       *_score_cmd(data, out, tiny_model_dir)[3:]),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    parked = wait_parked(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert parked, "the scorer exited before its second part"
    killed = Run(out)
    assert killed.meta()["status"] == "running", "the run finished before it could be killed"
    n_parts_at_kill = len(killed.part_paths())
    assert n_parts_at_kill == 2
    assert killed.read_progress()["done_tokens"] < killed.meta()["counts"]["tokens"]
    with pytest.raises(Exception):
        killed.read_examples()  # not complete: readers are told so

    done = subprocess.run(_score_cmd(data, out, tiny_model_dir, "--resume"), cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    run = Run(out)
    assert run.meta()["status"] == "complete"
    assert not list(out.rglob("*.tmp"))
    tokens = run.scan_tokens().collect()
    keys = tokens.select("example_id", "position")
    assert keys.is_duplicated().sum() == 0
    examples = run.read_examples()
    assert examples["example_id"].to_list() == list(range(len(rows)))
    assert tokens.height == examples["n_tokens"].sum()

    ref = score_dataset(ScoreConfig(source=str(data), out=str(tmp_path / "ref"),
                                    model=str(tiny_model_dir), token_budget=1024,
                                    part_tokens=1500), progress=False)  # in-process: no startup
    ref = ref.scan_tokens().sort("example_id", "position").collect()
    got = tokens.sort("example_id", "position")
    assert got["token_id"].to_list() == ref["token_id"].to_list()
    np.testing.assert_allclose(got["logp"].to_numpy(), ref["logp"].to_numpy(), atol=1e-5)


def test_resume_refuses_a_changed_config(tmp_path, tiny_model_dir):
    from infosft.errors import InfosftError

    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:4])
    cfg = ScoreConfig(source=str(data), out=str(tmp_path / "run"), model=str(tiny_model_dir))
    score_dataset(cfg, progress=False)
    cfg.max_length = 64
    with pytest.raises(InfosftError, match="max_length"):
        score_dataset(cfg, resume=True, progress=False)
    write_jsonl(data, ROWS[:5])
    cfg.max_length = 2048
    with pytest.raises(InfosftError, match="changed"):
        score_dataset(cfg, resume=True, progress=False)


def test_prefix_cache_gives_the_same_scores(tokenizer, tiny_model_dir):
    from infosft.data import prepare
    from infosft.models import load_model

    model, tok, _ = load_model(str(tiny_model_dir), device="cpu")
    _, exs = prepare(enumerate(ROWS[:6], 1), tok, max_length=512)
    plain = Scorer(model, tok).score_batch(exs)
    prefix = shared_prefix(exs)
    assert prefix
    cached = Scorer(model, tok, prefix=prefix).score_batch(exs)
    assert plain["token_id"].tolist() == cached["token_id"].tolist()
    np.testing.assert_allclose(plain["logp"], cached["logp"], atol=1e-5)
    np.testing.assert_allclose(plain["entropy"], cached["entropy"], atol=1e-5)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path, tiny_model_dir):
    """DESIGN: scoring shards by rank under the standard launcher, one part series per rank."""
    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:12])
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_score_cmd(data, one, tiny_model_dir), cwd=ROOT, check=True)
    cmd = torchrun(2, "-m", "infosft", "score", str(data), "--out", str(two),
                   "--model", str(tiny_model_dir), "--quiet")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    run = Run(two)
    assert {p.name.split("-")[1] for p in run.part_paths()} == {"000", "001"}
    got = run.scan_tokens().sort("example_id", "position").collect()
    ref = Run(one).scan_tokens().sort("example_id", "position").collect()
    assert got["token_id"].to_list() == ref["token_id"].to_list()
    np.testing.assert_allclose(got["logp"].to_numpy(), ref["logp"].to_numpy(), atol=1e-5)
    assert run.read_examples()["example_id"].to_list() == list(range(12))


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_target_stats_match_float64_on_a_random_head(chunk):
    """Every statistic against an independent float64 computation, including targets
    outside the top-k (ranked over the whole vocabulary) and tied logits."""
    g = torch.Generator().manual_seed(1)
    V, H, N, k = 500, 16, 40, 5
    head = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g))
        head.weight[7] = head.weight[3]          # tokens 3 and 7 always tie
    hidden = torch.randn(N, H, generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[:5] = 7                               # ties with token 3
    logits64 = hidden.double() @ head.weight.detach().double().T
    targets[5:10] = logits64[5:10].argmax(-1)     # rank 1
    targets[10:15] = logits64[10:15].topk(4).indices[:, 3]  # inside the top-k
    got = target_stats(hidden, targets, head, top_k=k, chunk=chunk)

    logp_all = torch.log_softmax(logits64, -1)
    want_logp = logp_all.gather(1, targets[:, None]).squeeze(1)
    want_rank = (logits64 > logits64.gather(1, targets[:, None])).sum(-1) + 1
    np.testing.assert_allclose(got["logp"].numpy(), want_logp.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["entropy"].numpy(),
                               -(logp_all.exp() * logp_all).sum(-1).numpy(), atol=1e-5)
    assert got["rank"].tolist() == want_rank.tolist()
    assert (want_rank > k).sum() > 10              # the full-vocabulary path ran
    np.testing.assert_allclose(got["top_logps"].numpy(), logp_all.topk(k).values.numpy(),
                               atol=1e-5)
    assert torch.equal(torch.sort(got["top_ids"], -1).values,
                       torch.sort(logp_all.topk(k).indices, -1).values)


def _record_progress(monkeypatch) -> list[dict]:
    """Every progress write of a scoring in this process, as written."""
    seen: list[dict] = []
    write = Run.write_progress

    def recording(self, rank, done, total, elapsed, stage="scoring"):
        write(self, rank, done, total, elapsed, stage=stage)
        seen.append(self.read_progress())

    monkeypatch.setattr(Run, "write_progress", recording)
    return seen


def test_scoring_says_each_stage_and_counts_tokens_between_parts(tmp_path, tiny_model_dir,
                                                                  monkeypatch):
    """The progress file names what the scorer does before it scores (so a job is never
    a silent "loading..." that jumps to 100%), and while scoring it counts tokens batch
    by batch, not only when a 64k-token part is written."""
    import infosft.analysis.score as score

    monkeypatch.setattr(score, "PROGRESS_EVERY_S", 0.0)
    seen = _record_progress(monkeypatch)
    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:12])
    run = score_dataset(ScoreConfig(source=str(data), out=str(tmp_path / "run"),
                                    model=str(tiny_model_dir), device="cpu", token_budget=256),
                        progress=False)
    stages = [p["stage"] for p in seen]
    first_scoring = stages.index("scoring")
    assert stages[:first_scoring] == ["reading the data", "loading the model"]
    assert stages[-1].startswith("finishing")
    assert seen[-1]["done_tokens"] == seen[-1]["total_tokens"] > 0  # the bar stays full
    scoring = [p for p in seen if p["stage"] == "scoring"]
    total = run.meta()["counts"]["tokens"]
    assert all(p["total_tokens"] == total for p in scoring)
    done = [p["done_tokens"] for p in scoring]
    assert done[0] == 0 and done[-1] == total and done == sorted(done)
    assert len(run.part_paths()) == 1 and len(set(done)) > 3  # one part, many batches
    assert run.read_progress() is None  # gone once complete


def test_scoring_names_the_default_models_first_use_conversion(tmp_path, monkeypatch):
    import infosft.analysis.score as score

    monkeypatch.setattr(score, "default_model_converted", lambda: False)
    seen = _record_progress(monkeypatch)
    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:1])
    score_dataset(ScoreConfig(source=str(data), out=str(tmp_path / "run"), device="cpu"),
                  progress=False)
    assert seen[0]["stage"].startswith("converting the default model (first use")
