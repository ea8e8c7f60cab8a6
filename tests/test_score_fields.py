"""The optional per-token fields of a scored run (issue 18): ``entropy_top20`` for every
target and ``logp_ref`` from ``infosft score --reference MODEL``, against independently
computed values; a reference with another vocabulary; old-layout runs read and resume
without mixing columns."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from infosft.analysis.score import ScoreConfig, score_dataset
from infosft.analysis.store import Run, atomic_write_json, atomic_write_parquet, read_part
from infosft.errors import InfosftError
from infosft.schemes.eaft import top_entropy
from infosft.scoring import target_logp, target_stats
from tests.helpers import SAMPLE, cli, error_line, perturbed, write_jsonl

SHORT = 96  # max_length: a few short examples keep the real model's tests quick
# the rows with the shortest prompts, so every one keeps targets within SHORT tokens
ROWS = sorted((json.loads(line) for line in SAMPLE.read_text().splitlines()),
              key=lambda r: len(r["prompt"]))[:12]


def _cfg(tmp_path, rows, name="run", **kw) -> ScoreConfig:
    data = tmp_path / f"{name}.jsonl"
    if not data.exists():
        write_jsonl(data, rows)
    return ScoreConfig(source=str(data), out=str(tmp_path / name), device="cpu",
                       max_length=SHORT, **kw)


def _tokens(run: Run) -> pl.DataFrame:
    return run.scan_tokens().sort("example_id", "position").collect()


def _forward(model, tokens: pl.DataFrame, example_id: int) -> tuple[torch.Tensor, np.ndarray]:
    """Plain transformers on one scored example's token ids: the full-vocabulary logits
    that predict each target ``(n_target, V)`` (float32) and the target mask."""
    ex = tokens.filter(pl.col("example_id") == example_id)
    ids = torch.tensor([ex["token_id"].to_list()])
    tgt = ex["is_target"].to_numpy()
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()      # row p predicts token p + 1
    rows = torch.from_numpy(np.flatnonzero(tgt)) - 1
    return logits[rows], tgt


def _top20_entropy(logits: torch.Tensor) -> np.ndarray:
    """Full logits -> top 20 -> softmax -> entropy (nats), in float64."""
    top = logits.double().topk(20, dim=-1).values
    p = torch.softmax(top, dim=-1)
    return (-(p * p.log()).sum(-1)).numpy()


def _target_logp(logits: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    logp = torch.log_softmax(logits.double(), dim=-1)
    return logp.gather(1, torch.from_numpy(targets).long()[:, None]).squeeze(1).numpy()


# ---------------------------------------------------------------- the engine

@pytest.mark.parametrize("top_k", [5, 20, 30])
def test_target_stats_top20_entropy_and_reference_logp(top_k):
    """entropy_top20 is eaft.top_entropy of the logits whatever top_k is; top_k rows stay
    top_k wide; the logp-only path gives target_stats' logp exactly."""
    g = torch.Generator().manual_seed(2)
    V, H, N = 300, 16, 37
    head = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(3 * torch.randn(V, H, generator=g))
    hidden = torch.randn(N, H, generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    got = target_stats(hidden, targets, head, top_k=top_k, chunk=8)
    logits64 = hidden.double() @ head.weight.detach().double().T
    np.testing.assert_allclose(got["entropy_top20"].numpy(), _top20_entropy(logits64),
                               atol=1e-5)
    np.testing.assert_allclose(got["entropy_top20"].numpy(),
                               top_entropy(hidden @ head.weight.detach().T).numpy(), atol=1e-6)
    assert got["top_ids"].shape == got["top_logps"].shape == (N, top_k)
    np.testing.assert_allclose(got["top_logps"].numpy(),
                               torch.log_softmax(logits64, -1).topk(top_k).values.numpy(),
                               atol=1e-5)
    assert torch.equal(target_logp(hidden, targets, head, chunk=8), got["logp"])


# ---------------------------------------------------------------- the real default model

@pytest.mark.slow
def test_default_model_entropy_top20_matches_plain_forward(tmp_path, default_model):
    model, _, _ = default_model
    run = score_dataset(_cfg(tmp_path, ROWS[:3]), progress=False)
    assert run.token_fields() == ("entropy_top20",)
    assert run.meta()["reference"] is None and run.meta()["config"]["reference"] is None
    tokens = _tokens(run)
    assert tokens.columns[-1] == "entropy_top20"
    for ex_id in range(3):
        logits, tgt = _forward(model, tokens, ex_id)
        got = tokens.filter(pl.col("example_id") == ex_id)["entropy_top20"].to_numpy()
        np.testing.assert_allclose(got[tgt], _top20_entropy(logits), atol=1e-4)
        assert np.isnan(got[~tgt]).all()  # null off target
        assert (got[tgt] > 0).all() and (got[tgt] <= np.log(20) + 1e-5).all()


@pytest.fixture(scope="module")
def perturbed_default(tmp_path_factory, default_dir, tokenizer):
    """A copy of the default model with seeded noise on its last layer's MLP, saved with
    the default tokenizer: a reference whose log-probs differ from the model's."""
    out = tmp_path_factory.mktemp("perturbed-default")
    model = perturbed(default_dir, 0.02, "layers.29.mlp")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, model.eval()


@pytest.mark.slow
def test_reference_logp_matches_a_forward_pass_of_the_reference(tmp_path, default_model,
                                                                 perturbed_default):
    model, _, _ = default_model
    ref_dir, ref_model = perturbed_default
    cfg = _cfg(tmp_path, ROWS[3:6], reference=str(ref_dir))
    run = score_dataset(cfg, progress=False)
    assert run.token_fields() == ("entropy_top20", "logp_ref")
    meta = run.meta()
    assert meta["reference"]["path"] == str(ref_dir) and meta["config"]["reference"] == str(ref_dir)
    tokens = _tokens(run)
    assert tokens.columns[-2:] == ["entropy_top20", "logp_ref"]
    moved = []
    for ex_id in range(3):
        ex = tokens.filter(pl.col("example_id") == ex_id)
        logits_ref, tgt = _forward(ref_model, tokens, ex_id)
        logits, _ = _forward(model, tokens, ex_id)
        y = ex["token_id"].to_numpy()[tgt]
        got_ref = ex["logp_ref"].to_numpy()
        np.testing.assert_allclose(got_ref[tgt], _target_logp(logits_ref, y), atol=2e-4)
        np.testing.assert_allclose(ex["logp"].to_numpy()[tgt], _target_logp(logits, y),
                                   atol=2e-4)
        # entropy_top20 is the scoring model's, not the reference's
        np.testing.assert_allclose(ex["entropy_top20"].to_numpy()[tgt], _top20_entropy(logits),
                                   atol=1e-4)
        assert np.isnan(got_ref[~tgt]).all()
        moved.append(np.abs(got_ref[tgt] - ex["logp"].to_numpy()[tgt]).mean())
    assert min(moved) > 1e-3  # the perturbation shows: logp_ref is not logp

    # complete: resuming with the same reference is a no-op; another or none is refused
    assert score_dataset(cfg, resume=True, progress=False).meta()["status"] == "complete"
    for other in (None, "default"):
        cfg.reference = other
        with pytest.raises(InfosftError, match="cannot resume with a different 'reference'"
                           ) as e:
            score_dataset(cfg, resume=True, progress=False)
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_default_model_as_its_own_reference_via_the_cli(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    rc, _, err = cli(capsys, "score", data, "--out", tmp_path / "run", "--device", "cpu",
                     "--max-length", SHORT, "--reference", "default", "--quiet")
    assert rc == 0, err
    run = Run(tmp_path / "run")
    assert run.meta()["reference"]["name"] == "default"
    tokens = _tokens(run).filter(pl.col("is_target"))
    assert tokens.height > 20
    assert np.array_equal(tokens["logp_ref"].to_numpy(), tokens["logp"].to_numpy())


# ---------------------------------------------------------------- the tiny model

def test_help_lists_reference(capsys):
    from infosft.app.cli import main

    assert main(["score", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--reference REFERENCE" in out and "logp_ref" in out


def _other_vocab_model(path):
    """A tiny Llama with its own 64-token word-level tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *(f"w{i}" for i in range(61))])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1)).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_reference_with_another_vocabulary_fails_before_scoring(tmp_path, capsys,
                                                                tiny_model_dir):
    other = _other_vocab_model(tmp_path / "other")
    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "score", data, "--out", out, "--model", tiny_model_dir,
                     "--reference", other, "--device", "cpu", "--quiet")
    line = error_line(err)
    assert rc != 0
    assert str(other) in line and str(tiny_model_dir) in line and "vocabulary" in line
    assert not out.exists() or not any(out.iterdir())  # nothing scored, nothing written


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory, tiny_model_dir, tokenizer):
    out = tmp_path_factory.mktemp("tiny-reference")
    perturbed(tiny_model_dir, 0.05, "mlp").save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _interrupt(run: Run, keep_parts: int, drop: tuple[str, ...] = ()) -> None:
    """Make a complete run look killed mid-way: only its first ``keep_parts`` parts
    (without the columns ``drop``), no examples table, status running."""
    for i, part in enumerate(run.part_paths()):
        if i >= keep_parts:
            part.unlink()
        elif drop:
            atomic_write_parquet(read_part(part).drop(drop), part)
    run.examples_path.unlink()
    meta = run.meta()
    meta["status"] = "running"
    atomic_write_json(run.meta_path, meta)


def test_resume_with_reference_keeps_both_columns(tmp_path, tiny_model_dir, tiny_reference):
    cfg = _cfg(tmp_path, ROWS[:8], model=str(tiny_model_dir), reference=str(tiny_reference),
               part_tokens=150, token_budget=256)
    full = _tokens(score_dataset(cfg, progress=False))
    run = Run(cfg.out)
    assert len(run.part_paths()) > 2
    _interrupt(run, keep_parts=2)
    # another reference (or none) is refused before anything changes
    for other in (None, str(tiny_model_dir)):
        with pytest.raises(InfosftError, match="reference") as e:
            score_dataset(ScoreConfig(**{**cfg.__dict__, "reference": other}), resume=True,
                          progress=False)
        assert "\n" not in str(e.value)
    assert len(run.part_paths()) == 2
    score_dataset(cfg, resume=True, progress=False)
    assert run.meta()["status"] == "complete" and run.token_fields() == ("entropy_top20",
                                                                        "logp_ref")
    got = _tokens(run)
    assert got.select("example_id", "position").equals(full.select("example_id", "position"))
    for col in ("logp", "entropy_top20", "logp_ref"):
        np.testing.assert_allclose(got[col].to_numpy(), full[col].to_numpy(), atol=1e-5)
    assert (got["logp_ref"] - got["logp"]).abs().max() > 1e-3


def test_old_layout_run_reads_and_resumes_without_new_columns(tmp_path, tiny_model_dir):
    """A run whose parts predate the optional columns: readers read it, and resuming it
    writes its remaining parts in the same layout (never a mix of part schemas)."""
    cfg = _cfg(tmp_path, ROWS[:8], model=str(tiny_model_dir), part_tokens=150,
               token_budget=256)
    full = _tokens(score_dataset(cfg, progress=False))
    run = Run(cfg.out)
    n_parts = len(run.part_paths())
    _interrupt(run, keep_parts=2, drop=("entropy_top20",))
    meta = run.meta()
    for key in ("reference",):  # what an older version did not record
        del meta[key], meta["config"][key]
    atomic_write_json(run.meta_path, meta)
    assert run.token_fields() == ()
    score_dataset(cfg, resume=True, progress=False)
    assert run.meta()["status"] == "complete" and len(run.part_paths()) == n_parts
    assert run.token_fields() == ()
    assert all("entropy_top20" not in read_part(p).columns for p in run.part_paths())
    got = _tokens(run)
    assert got.columns == [c for c in full.columns if c != "entropy_top20"]
    np.testing.assert_allclose(got["logp"].to_numpy(), full["logp"].to_numpy(), atol=1e-5)
    assert run.read_examples().height == 8
