"""infosft.fast_dropout: an independent Bernoulli(p) mask with exact expectation, like
nn.Dropout, and the swap into a PEFT model's LoRA adapters."""

from __future__ import annotations

import math

import pytest
import torch

from infosft.fast_dropout import FastDropout, speed_up_lora_dropout

N = 1 << 22


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_drops_each_element_independently_with_probability_p(p):
    torch.manual_seed(0)
    drop = FastDropout(p).train()
    assert abs(drop.p - p) <= 2 ** -17
    out = drop(torch.ones(N))
    dropped = out == 0
    sigma = math.sqrt(p * (1 - p) / N)
    assert abs(dropped.float().mean().item() - drop.p) < 5 * sigma
    assert torch.all(out[~dropped] == 1 / (1 - drop.p))  # the expectation stays exactly 1
    # neighbours share a 64-bit draw: their drops must still be independent (p^2 for pairs)
    for lag in (1, 2, 3, 4):
        both = (dropped[:-lag] & dropped[lag:]).float().mean().item()
        assert abs(both - drop.p ** 2) < 5 * math.sqrt(p ** 2 * (1 - p ** 2) / N)
    again = drop(torch.ones(N))
    assert not torch.equal(again == 0, dropped)  # a fresh mask per call


def test_gradient_is_the_mask_times_the_scale_and_eval_is_identity():
    torch.manual_seed(1)
    drop = FastDropout(0.3).train()
    x = torch.randn(64, 33, requires_grad=True)
    out = drop(x)
    out.sum().backward()
    kept = out != 0
    assert torch.equal(x.grad, kept.float() / (1 - drop.p))
    torch.testing.assert_close(out[kept], x[kept] / (1 - drop.p))
    drop.eval()
    assert drop(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        FastDropout(1.0)


def test_lora_adapters_get_it_with_their_p():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    def lora(p):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2))
        return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=2, lora_dropout=p,
                                                target_modules="all-linear"))

    model = lora(0.1)
    assert speed_up_lora_dropout(model) == 7  # q, k, v, o, gate, up, down
    drops = [m for m in model.modules() if isinstance(m, FastDropout)]
    assert len(drops) == 7 and all(abs(d.p - 0.1) < 1e-4 for d in drops)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert speed_up_lora_dropout(lora(0.0)) == 0  # PEFT's Identity: nothing to speed up
