"""oneDNN linear layers on prepacked weights: same outputs, weights restored bit for bit."""

from __future__ import annotations

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
    ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = torch.log_softmax(model(input_ids=ids).logits, -1)
        with packed_linears(model) as n:
            got = torch.log_softmax(model(input_ids=ids).logits, -1)
    assert n == 30 * 7 + 1  # q k v o gate up down per layer, and the output projection
    assert (got - ref).abs().max() < 2e-3
