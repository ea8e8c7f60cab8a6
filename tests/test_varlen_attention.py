"""infosft.varlen_attention: a padding-free row attends document by document, with the
result of each document run alone, and costs only the documents' own scores."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from infosft.trainers import WeightedCollator
from infosft.varlen_attention import NAME, use_varlen_attention

LENGTHS = (7, 13, 4)


def _llama(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


def _docs() -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, 300, (n,), generator=gen).tolist() for n in LENGTHS]


@pytest.fixture
def sdpa_calls(monkeypatch):
    """The query lengths of every scaled_dot_product_attention call."""
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.shape[-2])
        return original(q, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


def test_each_document_attends_alone(sdpa_calls):
    model = _llama()
    docs = _docs()
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([d])).logits[0] for d in docs]
    batch = WeightedCollator(0, padding_free=True)([{"input_ids": d} for d in docs])
    batch.pop("labels")
    assert use_varlen_attention(model) and model.config._attn_implementation == NAME
    sdpa_calls.clear()
    with torch.no_grad():
        packed = model(**batch).logits[0]
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)
    # per layer, one call per document: sum T_i^2 scores, not (sum T_i)^2
    assert sdpa_calls == list(LENGTHS) * 2


def test_without_boundaries_it_is_sdpa_masks_included():
    ref, model = _llama(), _llama()
    use_varlen_attention(model)
    docs = _docs()
    batch = WeightedCollator(0)([{"input_ids": d} for d in docs])  # padded, with a mask
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, ref(**inputs).logits)


def test_other_attention_implementations_are_left_alone():
    model = _llama("eager")
    assert not use_varlen_attention(model)
    assert model.config._attn_implementation == "eager"


def test_boundaries_that_do_not_cover_the_row_are_an_error():
    model = _llama()
    use_varlen_attention(model)
    ids = torch.tensor([_docs()[0]])
    with pytest.raises(ValueError, match="cu_seq_lens_q ends at 5"):
        model(input_ids=ids, position_ids=torch.arange(7)[None],
              cu_seq_lens_q=torch.tensor([0, 5], dtype=torch.int32))
