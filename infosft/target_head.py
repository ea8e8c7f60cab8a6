"""The vocabulary projection only where a supervised token is predicted.

A causal LM's forward projects every position onto the vocabulary: for the default
model (576 -> 49,152) that is as much work as eight of its 30 layers, and in SFT the
prompt positions are thrown away. :func:`add_target_head` gives a model's forward a
``target_labels`` argument: with it, the forward runs the backbone, projects only the
positions whose next token is supervised, and returns their log-probs, ``(B, T)`` in
:func:`infosft.loss.target_logprobs`' layout, instead of ``(B, T, V)`` logits; with
``target_entropy=True`` also each of those positions' top-20 entropy (EAFT's
``entropy_top20``), without gradient, from the same chunks. Without ``target_labels``,
the forward is the model's own.

The forward itself is patched (as TRL's fused LM head does), not called around, so that
DDP's and PEFT's wrappers, which call the model's forward, still run theirs. Models that
scale or cap their logits after the head (Gemma-2's soft-capping, Cohere's ``logit_scale``,
Granite's ``logits_scaling``...) keep the full path.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from infosft.data import IGNORE_INDEX
from infosft.loss import CHUNK_ELEMENTS, row_logprobs, shift_left

# Config fields of models whose logits are not plain lm_head(hidden).
_SCALED = ("final_logit_softcapping", "logit_scale", "output_multiplier",
           "lm_head_multiplier", "logits_scaling")
_PATCHED = "_infosft_target_head"


@dataclass
class TargetOutput(ModelOutput):
    """``log_probs`` ``(B, T)`` float32: ``log p(labels[:, t + 1] | ..t)``, 0 where not
    supervised; ``label_mask`` ``(B, T)`` bool, True where supervised; ``entropy_top20``
    ``(B, T)`` float32, detached, 0 where not supervised (None unless asked)."""

    log_probs: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    entropy_top20: torch.Tensor | None = None


def causal_lm(model: Any) -> Any:
    """The causal LM inside a PEFT model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model: Any) -> bool:
    """Whether the model's logits are ``lm_head(backbone(...).last_hidden_state)``."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    if config is None or not hasattr(lm, "get_output_embeddings"):
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text, name, None) is not None for name in _SCALED):
        return False
    head = lm.get_output_embeddings()
    backbone = getattr(lm, "base_model", lm)
    return isinstance(head, torch.nn.Linear) and backbone is not lm


def add_target_head(model: Any, chunk_elements: int = CHUNK_ELEMENTS) -> bool:
    """Give ``model``'s forward the ``target_labels`` argument (see the module docstring).

    ``model(**inputs, target_labels=labels)`` with ``labels`` ``(B, T)`` unshifted
    (``-100`` = not supervised) returns a :class:`TargetOutput`; ``target_entropy=True``
    fills its ``entropy_top20``. Returns whether the model has the argument now (False:
    unsupported, see :func:`supports`). Idempotent.
    """
    lm = causal_lm(model)
    if getattr(lm, _PATCHED, False):
        return True
    if not supports(model):
        return False
    original = lm.forward

    @functools.wraps(type(lm).forward)
    def forward(self, *args: Any, target_labels: torch.Tensor | None = None,
                target_entropy: bool = False, **kwargs: Any):
        if target_labels is None:
            return original(*args, **kwargs)
        for name in ("labels", "logits_to_keep", "return_dict"):  # the head's own arguments
            kwargs.pop(name, None)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state      # (B, T, H)
        targets = shift_left(target_labels.to(hidden.device), IGNORE_INDEX)
        mask = targets != IGNORE_INDEX
        logits = self.get_output_embeddings()(hidden[mask])                # (n, V)
        out = row_logprobs(logits, targets[mask], chunk_elements, entropy=target_entropy)
        logp, ent = out if target_entropy else (out, None)                 # (n,) each
        full = torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device)
        if ent is not None:
            ent = full.index_put((mask,), ent)
        return TargetOutput(log_probs=full.index_put((mask,), logp), label_mask=mask,
                            entropy_top20=ent)

    lm.forward = types.MethodType(forward, lm)
    setattr(lm, _PATCHED, True)
    return True
