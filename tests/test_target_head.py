"""infosft.target_head: the vocabulary projection only at target positions gives the
log-probs and gradients of the full logits, and leaves the model's own forward alone."""

from __future__ import annotations

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from infosft.loss import target_logprobs, weighted_nll
from infosft.target_head import add_target_head, supports

IGNORE = -100


def _llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=500, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, tie_word_embeddings=True))


def _lora(model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                                             target_modules="all-linear"))
    for name, p in model.named_parameters():  # B != 0, so the adapters change the output
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 500, (3, 12), generator=gen)
    labels = ids.clone()
    labels[:, :5] = IGNORE      # a prompt
    labels[2, 9:] = IGNORE      # a padded tail
    attention = (labels != IGNORE) | (torch.arange(12) < 5)
    return ids, labels, attention.long()


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_target_log_probs_and_lora_gradients_match_the_full_logits():
    model = _lora(_llama())
    ids, labels, attention = _batch()
    full = model(input_ids=ids, attention_mask=attention)
    logp_ref, mask_ref = target_logprobs(full.logits, labels)
    grads_ref = _grads(model, weighted_nll(logp_ref, mask_ref.float(), mask_ref))

    assert add_target_head(model)
    rows = []
    hook = model.get_base_model().lm_head.register_forward_hook(
        lambda m, args, out: rows.append(args[0].shape[0]))
    out = model(input_ids=ids, attention_mask=attention, target_labels=labels)
    hook.remove()
    assert torch.equal(out.label_mask, mask_ref)
    torch.testing.assert_close(out.log_probs, logp_ref, atol=1e-5, rtol=1e-5)
    assert rows == [int(mask_ref.sum())] < [ids.numel()]  # only where a target is predicted
    grads = _grads(model, weighted_nll(out.log_probs, out.label_mask.float(), out.label_mask))
    assert grads.keys() == grads_ref.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-6, rtol=1e-4)


def test_without_target_labels_the_forward_is_the_models_own():
    model = _llama()
    ids, _, attention = _batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=attention).logits
        assert add_target_head(model) and add_target_head(model)  # idempotent
        after = model(input_ids=ids, attention_mask=attention).logits
    assert torch.equal(before, after)


def test_models_that_scale_their_logits_keep_the_full_path():
    """Gemma-2 soft-caps its logits after the head: projecting the hidden states alone
    would give other log-probs, so there is no target head."""
    torch.manual_seed(0)
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=300, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           num_key_value_heads=1, head_dim=16,
                                           final_logit_softcapping=30.0))
    assert supports(_llama()) and not supports(gemma)
    assert not add_target_head(gemma)
    assert "forward" not in vars(gemma)  # its own forward, untouched
