"""oneDNN linear layers on prepacked weights: same outputs, weights restored bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from infosft.packed_linear import packed_linears, supported

pytestmark = pytest.mark.skipif(not supported(), reason="this torch build has no oneDNN ops")


def _tiny(tied: bool = True, bias: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, tie_word_embeddings=tied,
                                        attention_bias=bias, mlp_bias=bias)).eval()


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("tied,bias", [(True, False), (False, True)])
def test_same_logits_inside_and_weights_restored_exactly(tied, bias):
    model = _tiny(tied, bias)
    ids = torch.randint(0, 300, (3, 17))
    before = _snapshot(model)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        with packed_linears(model) as n:
            got = model(input_ids=ids).logits
            # a weight only its layer uses is held packed alone (no second copy) ...
            assert model.model.layers[0].mlp.up_proj.weight.numel() == 0
            # ... a tied one stays usable by the embedding
            assert model.lm_head.weight.numel() == (300 * 64 if tied else 0)
        again = model(input_ids=ids).logits
    assert n == n_linear
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(again, ref)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_restored_after_an_error_inside_the_block():
    model = _tiny()
    before = _snapshot(model)
    with pytest.raises(KeyError):
        with packed_linears(model):
            raise KeyError("boom")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_nested_blocks_on_one_model_swap_once():
    model = _tiny()
    with packed_linears(model) as outer, packed_linears(model) as inner:
        assert outer > 0 and inner == 0
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_off_for_other_dtypes_and_by_environment(monkeypatch):
    with packed_linears(_tiny().to(torch.bfloat16)) as n:
        assert n == 0
    monkeypatch.setenv("INFOSFT_PACKED_LINEAR", "0")
    model = _tiny()
    with packed_linears(model) as n:
        assert n == 0
        assert model.model.layers[0].mlp.up_proj.weight.numel() == 64 * 96


@pytest.mark.slow
def test_default_model_logprobs_move_only_by_rounding(default_model):
    """The 30-layer model in the block: log-probs within fp32 summation noise."""
    model, _, _ = default_model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=g)
    with torch.inference_mode():
        ref = torch.log_softmax(model(input_ids=ids).logits, -1)
        with packed_linears(model) as n:
            got = torch.log_softmax(model(input_ids=ids).logits, -1)
    assert n == 30 * 7 + 1  # q k v o gate up down per layer, and the output projection
    assert (got - ref).abs().max() < 2e-3


_GROWTH_SCRIPT = """
import os, sys
{env}
import torch
from infosft.memory import release_freed_memory, rss_mb
from infosft.packed_linear import pack_weight, packed_linear

p = pack_weight(torch.randn(256, 128), 512)
packed_linear(torch.randn(1, 128), p, None)
release_freed_memory()
start = rss_mb()
for rows in range(2, 802, 2):  # a new input shape every call, as scoring batches have
    packed_linear(torch.randn(rows, 128), p, None)
    release_freed_memory()
print(round(rss_mb() - start))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, glibc trim")
@pytest.mark.slow
def test_memory_stays_flat_over_many_input_shapes():
    """oneDNN's per-shape caches are capped on import: 400 shapes cost a few MB, not
    the ~200 MB they do with oneDNN's default capacities."""
    def growth(env: str) -> int:
        code = _GROWTH_SCRIPT.format(env=env)
        clean = {k: v for k, v in os.environ.items()  # this process set them on import
                 if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=clean)
        return int(out.stdout.split()[-1])

    uncapped = growth('os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "1024"\n'
                      'os.environ["LRU_CACHE_CAPACITY"] = "1024"')
    capped = growth("")
    assert capped < 30 and uncapped > 100, (capped, uncapped)


def test_backward_passes_the_input_gradient_of_frozen_layers_only():
    """LoRA-style training: frozen layers on packed weights give the same loss and the
    same gradients to the trained parameters; trained layers are not swapped."""
    model = _tiny(tied=True).train()
    for p in model.parameters():
        p.requires_grad_(False)
    trained = model.model.layers[1].mlp.down_proj
    trained.weight.requires_grad_(True)
    model.model.norm.weight.requires_grad_(True)
    ids = torch.randint(0, 300, (2, 11))
    before = _snapshot(model)

    def grads():
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), trained.weight.grad.clone(), model.model.norm.weight.grad.clone()

    ref = grads()
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with packed_linears(model, backward=True) as n:
        assert "forward" not in trained.__dict__ and trained.weight.numel() == 64 * 96
        got = grads()
    assert n == n_linear - 1
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert ref[1].abs().sum() > 0 and ref[2].abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
