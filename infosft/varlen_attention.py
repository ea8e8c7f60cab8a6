"""Attention over padding-free batches, one document at a time, for devices without FlashAttention.

A padding-free batch is one row ``(1, sum T_i)`` of several documents, with
``position_ids`` restarting at 0 at each (see :class:`infosft.trainers.WeightedCollator`).
transformers' ``sdpa`` attention reads such a row as one block-diagonal mask and
computes all ``(sum T_i)^2`` scores, most of them masked: for 4 documents of ~170 tokens
that was 21% of a LoRA training step on the CPU. FlashAttention's varlen kernels skip
the masked blocks, but need CUDA.

``infosft_varlen`` is an attention implementation (transformers' ``AttentionInterface``)
that runs causal SDPA on each document alone, from the collator's ``cu_seq_lens_q``
boundaries: ``sum T_i^2`` scores, the same result (up to fp32 summation order). Without
those boundaries (padded batches, evaluation, generation) it is plain ``sdpa``, masks
included. :func:`use_varlen_attention` switches a model to it.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "infosft_varlen"


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: torch.Tensor | None,
                             dropout: float = 0.0, scaling: float | None = None,
                             **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``query`` ``(B, H, T, D)``, ``key``/``value`` ``(B, H_kv, T, D)`` -> ``(B, T, H, D)``.

    With ``cu_seq_lens_q`` ``(n + 1,)`` (one row of ``n`` documents, no KV cache): each
    document's causal attention alone. Otherwise transformers' ``sdpa_attention_forward``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.pop("cu_seq_lens_q", None)
    for name in ("cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
        kwargs.pop(name, None)
    if (cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]
            or getattr(module, "is_causal", True) is False):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    bounds = cu.tolist()
    if bounds[-1] != query.shape[2]:
        raise ValueError(f"cu_seq_lens_q ends at {bounds[-1]}, but the row has "
                         f"{query.shape[2]} tokens")
    parts = [sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                    None, dropout=dropout, scaling=scaling, is_causal=True,
                                    **kwargs)[0]
             for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
    return torch.cat(parts, dim=1), None


def register() -> None:
    """Make ``infosft_varlen`` known to transformers (attention and mask), once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, varlen_attention_forward)
        # The mask is sdpa's, for the fallback; the per-document path ignores it.
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_varlen_attention(model: Any) -> bool:
    """Switch ``model`` (or a PEFT model's base) from ``sdpa`` to ``infosft_varlen``.

    Returns whether it switched: models on another implementation (FlashAttention,
    eager, flex) are left as they are.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    register()
    base.set_attn_implementation(NAME)
    return True
