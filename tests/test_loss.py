"""The weighted loss against independent recomputations: the analysis core's scores, a
plain full log-softmax, transformers' own causal-LM loss and a real Trainer step."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from infosft.data import prepare
from infosft.loss import make_loss_func, shift_left, target_logprobs
from infosft.weights import token_weights
from tests.helpers import SAMPLE, write_jsonl

KNOBS = {"sft": {}, "dft": {}, "infosft": {"P": 0.93}, "profit": {"threshold": 0.3}}


def reference_loss(logits, labels, scheme, n=None, **knobs):
    """``sum(w * -logp) / N`` from a full fp64 log-softmax: the textbook formula."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    mask = targets != -100
    logp = torch.log_softmax(logits.double(), -1).gather(
        -1, targets.clamp(min=0)[..., None]).squeeze(-1)
    w = token_weights(logp.detach(), scheme, **knobs).double() * mask
    return -(w * logp * mask).sum() / (mask.sum() if n is None else n)


def pad_batch(examples, pad_id):
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` ``(B, T)``."""
    width = max(len(e.tokens.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.tokens.input_ids)
        ids[i, :n] = torch.tensor(e.tokens.input_ids)
        labels[i, :n] = torch.tensor(e.tokens.labels())
        attn[i, :n] = 1
    return ids, attn, labels


@pytest.mark.parametrize("scheme", list(KNOBS))
def test_loss_and_gradient_match_full_log_softmax(scheme):
    torch.manual_seed(0)
    logits = torch.randn(3, 9, 40, requires_grad=True) * 3
    logits.retain_grad()
    labels = torch.randint(0, 40, (3, 9))
    labels[0, :4] = -100
    labels[2] = -100                              # a row with no target at all
    # A chunk of 2 rows: many chunks, some all-ignored, so the chunking is exercised.
    loss = make_loss_func(scheme, chunk_elements=80, **KNOBS[scheme])(logits, labels)
    ref = reference_loss(logits, labels, scheme, **KNOBS[scheme])
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    g, = torch.autograd.grad(loss, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g.double(), g_ref.double(), rtol=1e-5, atol=1e-7)


def test_gradient_treats_weights_as_constants():
    """d/dlogits of sum(w_detached * -logp)/N, not of sum(w(logp) * -logp)/N."""
    torch.manual_seed(1)
    logits = (torch.randn(2, 6, 30) * 2).requires_grad_()
    labels = torch.randint(0, 30, (2, 6))
    g, = torch.autograd.grad(make_loss_func("dft")(logits, labels), logits)
    targets = shift_left(labels, -100)
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    mask = targets != -100
    detached, = torch.autograd.grad(-(logp.exp().detach() * logp)[mask].sum() / mask.sum(), logits,
                                    retain_graph=True)
    attached, = torch.autograd.grad(-(logp.exp() * logp)[mask].sum() / mask.sum(), logits)
    torch.testing.assert_close(g, detached, rtol=1e-5, atol=1e-7)
    assert (g - attached).abs().max() > 1e-3      # the two really differ


def test_bf16_logits_give_fp32_loss_and_bf16_gradient():
    torch.manual_seed(2)
    logits = (torch.randn(2, 5, 64) * 4).bfloat16().requires_grad_()
    labels = torch.randint(0, 64, (2, 5))
    loss = make_loss_func("infosft", C=1.5)(logits, labels)
    assert loss.dtype == torch.float32
    exact = logits.detach().float().requires_grad_()
    ref = reference_loss(exact, labels, "infosft", C=1.5)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    g, = torch.autograd.grad(loss, logits)
    g_ref, = torch.autograd.grad(ref, exact)
    assert g.dtype == torch.bfloat16
    torch.testing.assert_close(g.float(), g_ref, rtol=2e-2, atol=1e-4)


def test_profit_divides_by_all_supervised_tokens():
    torch.manual_seed(3)
    logits = torch.randn(2, 8, 20)
    labels = torch.randint(0, 20, (2, 8))
    # Make every other next token likely, so some are kept and some dropped.
    boost = F.one_hot(shift_left(labels, 0), 20) * 5.0
    logits = logits + boost * (torch.arange(8) % 2 == 0)[None, :, None]
    loss_fn = make_loss_func("profit", threshold=0.1)
    loss = loss_fn(logits, labels)
    logp, mask = target_logprobs(logits, labels)
    kept = mask & (logp.exp() >= 0.1)
    assert 0 < kept.sum() < mask.sum()            # the case where the divisor matters
    assert loss.item() == pytest.approx((-logp[kept].sum() / mask.sum()).item(), rel=1e-6)
    stats = loss_fn.pop_stats()
    assert stats["target_tokens"] == mask.sum().item()
    assert stats["zero_weight_share"] == pytest.approx(1 - kept.sum().item() / mask.sum().item())
    assert loss_fn.pop_stats()["target_tokens"] == 0   # popped


def test_num_items_in_batch_overrides_local_count():
    torch.manual_seed(4)
    logits = torch.randn(2, 6, 25)
    labels = torch.randint(0, 25, (2, 6))
    f = make_loss_func("sft")
    local = f(logits, labels)
    assert f(logits, labels, num_items_in_batch=torch.tensor(40)).item() == pytest.approx(
        local.item() * 10 / 40, rel=1e-6)         # 10 local targets, 40 in the step
    assert f(logits, torch.full_like(labels, -100)).item() == 0.0   # no target: 0, not NaN


def test_static_mode_uses_the_batch_weights():
    torch.manual_seed(5)
    logits = torch.randn(2, 6, 25)
    labels = torch.randint(0, 25, (2, 6))
    weights = torch.rand(2, 6)
    loss = make_loss_func("infosft", mode="static")(logits, labels, weights=weights)
    logp, mask = target_logprobs(logits, labels)
    expected = -(weights[:, 1:] * logp[:, :-1])[mask[:, :-1]].sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="weights"):
        make_loss_func("infosft", mode="static")(logits, labels)


def test_bad_knobs_fail_when_the_loss_is_made():
    with pytest.raises(ValueError, match="C must"):
        make_loss_func("infosft", C=-1.0)
    with pytest.raises(ValueError, match="mode"):
        make_loss_func("infosft", mode="offline")


def test_profit_random_draws_a_new_pattern_each_step():
    logits = torch.zeros(1, 400, 4)
    labels = torch.zeros(1, 400, dtype=torch.long)
    f = make_loss_func("profit", direction="random", threshold=0.5, seed=3)
    masks = [f.weights_for(torch.zeros(400)) for _ in range(1)]
    f(logits, labels)
    masks.append(f.weights_for(torch.zeros(400)))
    assert not torch.equal(masks[0], masks[1])
    assert 0.4 < masks[1].mean() < 0.6
    g = make_loss_func("profit", direction="random", threshold=0.5, seed=3)
    assert torch.equal(g.weights_for(torch.zeros(400)), masks[0])   # seeded: repeatable
    g.skip_calls(1)                      # a run resumed after one micro-batch
    assert torch.equal(g.weights_for(torch.zeros(400)), masks[1])


# --- against the analysis core, on the real default model ---------------------------

@pytest.fixture(scope="module")
def scored_batch(tmp_path_factory, default_model):
    """Six sample rows scored by the analysis core, and the same rows as one padded batch."""
    from infosft.analysis.score import ScoreConfig, score_dataset

    model, tok, _ = default_model
    tmp = tmp_path_factory.mktemp("loss")
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:6]]
    data = write_jsonl(tmp / "rows.jsonl", rows)
    run = score_dataset(ScoreConfig(source=str(data), out=str(tmp / "run"), device="cpu",
                                    max_length=512), progress=False)
    _, examples = prepare(enumerate(rows, 1), tok, max_length=512)
    ids, attn, labels = pad_batch(examples, tok.pad_token_id)
    return run, examples, ids, attn, labels


def _core_loss(run, scheme, **knobs):
    """``sum(w * -logp) / N`` from the scored run's stored target log-probs."""
    logp = (run.scan_tokens().filter(pl.col("is_target")).select("logp").collect()
            .to_series().to_numpy().astype(np.float64))
    w = token_weights(torch.from_numpy(logp), scheme, **knobs).double().numpy()
    return float((w * -logp).sum() / len(logp))


@pytest.mark.parametrize("scheme", list(KNOBS))
@pytest.mark.slow
def test_step0_loss_equals_the_analysis_core(scored_batch, default_model, scheme):
    run, _, ids, attn, labels = scored_batch
    model = default_model[0]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attn)
    loss = make_loss_func(scheme, **KNOBS[scheme])(out, labels)
    assert loss.item() == pytest.approx(_core_loss(run, scheme, **KNOBS[scheme]), rel=1e-4)


@pytest.mark.slow
def test_static_weights_exported_from_scoring_give_the_same_loss(scored_batch, default_model,
                                                               tmp_path):
    import datasets

    from infosft.analysis.export import export_weighted

    run, _, ids, attn, labels = scored_batch
    path = export_weighted(run.path, tmp_path / "w.parquet", "infosft", P=0.93)
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    weights = torch.zeros(labels.shape)
    for i, rec in enumerate(sorted(ds, key=lambda r: r["example_id"])):
        assert rec["input_ids"] == ids[i, :len(rec["input_ids"])].tolist()
        weights[i, :len(rec["weights"])] = torch.tensor(rec["weights"])
    with torch.no_grad():
        out = default_model[0](input_ids=ids, attention_mask=attn)
    static = make_loss_func("infosft", mode="static")(out, labels, weights=weights)
    online = make_loss_func("infosft", P=0.93)(out, labels)
    assert static.item() == pytest.approx(_core_loss(run, "infosft", P=0.93), rel=1e-4)
    assert static.item() == pytest.approx(online.item(), rel=1e-4)


@pytest.mark.slow
def test_sft_equals_transformers_causal_lm_loss(scored_batch, default_model):
    _, _, ids, attn, labels = scored_batch
    with torch.no_grad():
        out = default_model[0](input_ids=ids, attention_mask=attn, labels=labels)
    ours = make_loss_func("sft")(out, labels)
    assert ours.item() == pytest.approx(out.loss.item(), rel=1e-5)


# --- num_items_in_batch through a real Trainer with gradient accumulation ---------

def _one_sgd_step(model_dir, rows, tmp, batch, accum, scheme="infosft", use_n=True):
    """Parameters after one SGD step of a real Trainer with our loss."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    _, examples = prepare(enumerate(rows, 1), tok, max_length=256)
    ds = Dataset.from_list([{"input_ids": e.tokens.input_ids, "labels": e.tokens.labels()}
                            for e in examples])

    def collate(feats):
        width = max(len(f["input_ids"]) for f in feats)
        pad = lambda key, v: torch.tensor([f[key] + [v] * (width - len(f[key])) for f in feats])
        ids = pad("input_ids", tok.pad_token_id)
        attn = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                             for f in feats])
        return {"input_ids": ids, "attention_mask": attn, "labels": pad("labels", -100)}

    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accum, max_steps=1, optim="sgd",
                             learning_rate=10.0, lr_scheduler_type="constant", use_cpu=True,
                             report_to="none", save_strategy="no", seed=0,
                             dataloader_num_workers=0, disable_tqdm=True)
    loss_fn = make_loss_func(scheme, P=0.9)
    if not use_n:  # the classic bug: a per-micro-batch mean
        loss_fn = lambda out, labels, num_items_in_batch=None, _f=loss_fn: _f(out, labels)  # noqa: E731
    Trainer(model=model, args=args, train_dataset=ds, data_collator=collate,
            compute_loss_func=loss_fn).train()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir, tmp_path):
    """4 examples of very different lengths: one batch of 4 and 2 x 2 accumulated give
    the same step, because both divide by the step's total supervised tokens."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:40]]
    rows = sorted(rows, key=lambda r: len(r["response"]))
    rows = [rows[0], rows[-1], rows[1], rows[-2]]
    start = _one_sgd_step(tiny_model_dir, rows, tmp_path / "a", batch=4, accum=1)
    accum = _one_sgd_step(tiny_model_dir, rows, tmp_path / "b", batch=2, accum=2)
    local = _one_sgd_step(tiny_model_dir, rows, tmp_path / "c", batch=2, accum=2, use_n=False)
    from transformers import AutoModelForCausalLM

    base = torch.cat([p.detach().flatten() for p in
                      AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters()])
    step_big, step_accum = start - base, accum - base
    assert step_big.abs().max() > 1e-4                       # the step did something
    torch.testing.assert_close(step_accum, step_big, rtol=1e-3, atol=1e-6)
    # Dividing each micro-batch by its own count is a different (wrong) step.
    assert ((local - base) - step_big).abs().max() > 10 * (step_accum - step_big).abs().max()


def test_logged_q_histogram_and_band_weights_match_numpy_over_two_calls():
    torch.manual_seed(7)
    loss_fn = make_loss_func("infosft", P=0.9)
    qs, ws = [], []
    for _ in range(2):  # two micro-batches before one logging step
        logits, labels = torch.randn(3, 10, 16) * 3, torch.randint(0, 16, (3, 10))
        labels[0, :4] = -100
        loss_fn(logits, labels)
        logp, mask = target_logprobs(logits, labels)
        qs.append(logp[mask].exp().numpy())
        ws.append(token_weights(logp[mask], "infosft", P=0.9).numpy())
    q, w = np.concatenate(qs), np.concatenate(ws)
    stats = loss_fn.pop_stats()
    want, _ = np.histogram(q, bins=20, range=(0.0, 1.0))
    assert stats["q_hist"] == want.tolist() and sum(stats["q_hist"]) == q.size
    band = np.searchsorted([0.1, 0.9], q, side="right")  # low / medium / high
    for i, name in enumerate(("low", "medium", "high")):
        assert stats[f"weight_share_{name}"] == pytest.approx(w[band == i].sum() / w.sum(),
                                                              rel=1e-5)
    assert loss_fn.pop_stats()["q_hist"] is None  # popped
