"""The loss's online per-token fields (issue 18): EAFT's top-20 entropy from the trained
model's own logits, computed in the chunked log-softmax; excess (Rho-1) against a
reference's log-probs; ``example`` ids; a user's ``module:function`` scheme. Each is
checked against a computation written out here, independently of infosft's code."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import infosft.loss as loss_module
from infosft.loss import WeightedLoss, example_ids, target_logprobs
from infosft.target_head import add_target_head

IGNORE = -100


def batch(b=3, t=9, v=67, seed=0, scale=4.0):
    """Random logits (spread-out probabilities) and labels with prompts and padding."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, v, generator=gen) * scale).requires_grad_()
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[0, :3] = IGNORE  # a prompt
    labels[1, 6:] = IGNORE  # padding
    labels[2, :2] = IGNORE
    return logits, labels


def eaft_llamafactory(logits, labels, num_items, alpha):
    """LLaMA-Factory's ``_eaft_cross_entropy``, written out: per-token CE times
    ``(H_top20 / 3) ** alpha`` (detached), summed, divided by num_items."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    ce = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="none")
    with torch.no_grad():
        top = torch.topk(shift_logits, k=20, dim=-1).values
        probs = torch.softmax(top, dim=-1)
        entropy = -(probs * torch.log(probs + 1e-10)).sum(-1)
        w = (entropy / 3.0) ** alpha
    return (ce * w * (shift_labels != IGNORE)).sum() / num_items


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("chunk_elements", [67 * 4, loss_module.CHUNK_ELEMENTS])
def test_online_eaft_is_llamafactorys_loss_values_and_gradients(alpha, chunk_elements):
    logits, labels = batch()
    n = int((labels[:, 1:] != IGNORE).sum())
    ours = WeightedLoss("eaft", alpha=alpha, chunk_elements=chunk_elements)(logits, labels, n)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = eaft_llamafactory(logits, labels, n, alpha)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert torch.allclose(g_ours, g_ref, atol=1e-6, rtol=1e-4)
    # the control: the weights matter (plain SFT gives another loss)
    assert float(WeightedLoss("sft")(logits, labels, n).detach()) != pytest.approx(float(ref.detach()), rel=1e-3)


def test_target_logprobs_entropy_is_the_top20_entropy_without_gradient():
    logits, labels = batch(v=50)
    logp, mask, ent = target_logprobs(logits, labels, chunk_elements=50 * 2, entropy=True)
    assert not ent.requires_grad and ent.dtype == torch.float32 and ent.shape == logp.shape
    top = logits.detach()[:, :].topk(20, dim=-1).values.double()
    p = top.softmax(-1)
    expected = -(p * p.log()).sum(-1).float()
    assert torch.allclose(ent[mask], expected[mask], atol=1e-5)
    assert (ent[~mask] == 0).all()
    assert 0 < ent[mask].min() and ent[mask].max() <= math.log(20) + 1e-5
    # same logp as without the entropy
    logp2, _ = target_logprobs(logits, labels, chunk_elements=50 * 2)
    assert torch.equal(logp, logp2)


@pytest.mark.parametrize("scheme", ["sft", "dft", "infosft", "profit"])
def test_other_schemes_compute_no_entropy(monkeypatch, scheme):
    def fail(*a, **k):
        raise AssertionError("top_entropy computed for a scheme that does not need it")

    monkeypatch.setattr(loss_module, "top_entropy", fail)
    logits, labels = batch()
    loss = WeightedLoss(scheme)(logits, labels)
    loss.backward()
    assert WeightedLoss(scheme).needs == ()


def test_target_head_gives_the_same_entropy_as_the_full_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.model.norm.weight.data *= 20  # spread-out probabilities
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(100, 5000, (2, 12), generator=gen)
    labels = ids.clone()
    labels[0, :4] = IGNORE
    with torch.no_grad():
        full = model(ids).logits
    logp_full, mask, ent_full = target_logprobs(full, labels, entropy=True)
    assert add_target_head(model)
    with torch.no_grad():
        out = model(ids, target_labels=labels, target_entropy=True)
        plain = model(ids, target_labels=labels)
    assert plain.entropy_top20 is None
    assert torch.equal(out.label_mask, mask)
    assert torch.allclose(out.log_probs, logp_full, atol=1e-5)
    assert torch.allclose(out.entropy_top20, ent_full, atol=1e-5)
    assert (ent_full[mask] > 0).all()


# ---------------------------------------------------------------- excess (Rho-1)


def excess_bruteforce(logp, logp_ref, mask, num_items, keep, per):
    """Rho-1 written out: per set (the micro-batch, or each row), keep the ceil(keep * n)
    supervised tokens with the largest logp_ref - logp; loss = sum of their -logp / N."""
    total = torch.zeros(())
    rows = [list(range(logp.shape[0]))] if per == "all" else [[r] for r in range(logp.shape[0])]
    for group in rows:
        tokens = [(float(logp_ref[r, t] - logp[r, t].detach()), r, t) for r in group
                  for t in range(logp.shape[1]) if mask[r, t]]
        tokens.sort(key=lambda x: -x[0])
        for _, r, t in tokens[:math.ceil(keep * len(tokens) - 1e-9)]:
            total = total - logp[r, t]
    return total / num_items


@pytest.mark.parametrize("keep,per", [(0.6, "all"), (0.3, "example"), (1.0, "all")])
def test_online_excess_is_rho1_written_out(keep, per):
    logits, labels = batch(seed=2)
    ref_logits, _ = batch(seed=3)
    n = int((labels[:, 1:] != IGNORE).sum())
    logp, mask = target_logprobs(logits, labels)
    with torch.no_grad():
        logp_ref, _ = target_logprobs(ref_logits.detach(), labels)
    loss_fn = WeightedLoss("excess", keep=keep, per=per)
    assert loss_fn.needs_reference and not loss_fn.needs_entropy
    ours = loss_fn.loss_of_logprobs(logp, mask, n, fields={"logp_ref": logp_ref})
    (g_ours,) = torch.autograd.grad(ours, logits)
    # independent: float64 log-softmax of the same logits
    lsm = logits.double().log_softmax(-1)
    tgt = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    lp64 = lsm.gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1)
    ref64 = ref_logits.detach().double().log_softmax(-1).gather(
        -1, tgt.clamp(min=0)[..., None]).squeeze(-1)
    expected = excess_bruteforce(lp64, ref64, tgt != IGNORE, n, keep, per)
    (g_exp,) = torch.autograd.grad(expected, logits)
    assert float(ours.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert torch.allclose(g_ours, g_exp.float(), atol=1e-6)
    stats = loss_fn.pop_stats()
    m = int(mask.sum())
    if per == "all":
        assert stats["mean_weight"] == pytest.approx(math.ceil(keep * m) / m)


def test_excess_ranks_only_supervised_tokens():
    """Prompt and padding positions (logp 0, logp_ref 0) never take a kept place."""
    logp = torch.tensor([[0.0, -1.0, -2.0, -3.0, 0.0]])
    mask = torch.tensor([[False, True, True, True, False]])
    ref = torch.tensor([[5.0, -1.5, -1.0, -1.0, 9.0]])  # excess at supervised: -0.5, 1, 2
    loss_fn = WeightedLoss("excess", keep=0.5)
    w = loss_fn.weights_for(logp, {"logp_ref": ref, "example": example_ids(logp.shape)}, mask)
    assert w.tolist() == [[0.0, 0.0, 1.0, 1.0, 0.0]]


def test_excess_without_a_reference_says_how_to_give_one():
    logits, labels = batch()
    with pytest.raises(ValueError, match="reference_model"):
        WeightedLoss("excess")(logits, labels)
    # static mode needs nothing: the weights come from the batch
    assert WeightedLoss("excess", mode="static").needs == ()


def test_example_ids_follow_rows_or_restarting_positions():
    assert example_ids((2, 3)).tolist() == [[0, 0, 0], [1, 1, 1]]
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]])
    assert example_ids((1, 8), pos).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    pos2 = torch.tensor([[0, 1, 2], [0, 1, 0]])
    assert example_ids((2, 3), pos2).tolist() == [[0, 0, 0], [1, 1, 2]]


def test_excess_per_example_in_a_padding_free_row_ranks_each_document():
    logp = torch.tensor([[-1.0, -2.0, -3.0, -1.0, -2.0, -3.0]])
    ref = torch.zeros_like(logp)  # excess = -logp: the last of each document is largest
    mask = torch.ones_like(logp, dtype=torch.bool)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]])
    loss_fn = WeightedLoss("excess", keep=0.3, per="example")
    w = loss_fn.weights_for(logp, {"logp_ref": ref, "example": example_ids((1, 6), pos)}, mask)
    assert w.tolist() == [[0.0, 0.0, 1.0, 0.0, 0.0, 1.0]]


# ---------------------------------------------------------------- a user's scheme


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "fields_user_scheme.py").write_text(textwrap.dedent('''
        def focal(logp, gamma=2.0):
            """w = (1 - q) ** gamma"""
            return (1 - logp.exp()) ** gamma

        def calm(logp, entropy_top20, beta=1.0):
            """w = exp(-beta * H)"""
            return (-beta * entropy_top20).exp()
    '''))
    monkeypatch.chdir(tmp_path)
    yield "fields_user_scheme"
    sys.modules.pop("fields_user_scheme", None)


def test_a_user_scheme_trains_online_with_its_knob(user_module):
    logits, labels = batch(seed=4)
    n = int((labels[:, 1:] != IGNORE).sum())
    ours = WeightedLoss(f"{user_module}:focal", gamma=1.5)(logits, labels, n)
    tgt = labels[:, 1:].reshape(-1)
    lsm = logits[:, :-1].reshape(-1, logits.shape[-1]).log_softmax(-1)
    lp = lsm.gather(1, tgt.clamp(min=0)[:, None]).squeeze(1)
    w = (1 - lp.detach().exp()) ** 1.5
    expected = -(w * lp)[tgt != IGNORE].sum() / n
    assert float(ours.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    # a user scheme that reads the entropy gets it online too
    calm = WeightedLoss(f"{user_module}:calm", beta=0.5)
    assert calm.needs_entropy
    h = torch.topk(logits[:, :-1].reshape(-1, logits.shape[-1]).detach(), 20).values
    p = h.softmax(-1)
    ent = -(p * p.log()).sum(-1)
    expected = -((-0.5 * ent).exp() * lp)[tgt != IGNORE].sum() / n
    assert float(calm(logits, labels, n).detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
