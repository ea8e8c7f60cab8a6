"""EAFT, entropy-adaptive fine-tuning (arXiv 2601.02151, LLaMA-Factory's ``use_eaft_loss``).

``w = (H_top20 / 3) ** alpha`` with ``H_top20`` the entropy of the model's 20 most
likely next tokens, renormalized (3 ~ ln 20, its largest value): a token the model is
sure of (a confident conflict when it is wrong) weighs little, an uncertain one up to ~1.
As LLaMA-Factory's ``_eaft_cross_entropy``: top-20 of the logits, softmax over them.
"""

import torch

from infosft.schemes.base import Knob, Scheme, register

TOP = 20
SCALE = 3.0


def top_entropy(logits: torch.Tensor, k: int = TOP) -> torch.Tensor:
    """``(*)`` entropy in nats of the renormalized top-``k`` of ``logits`` ``(*, V)``."""
    top = logits.float().topk(min(k, logits.shape[-1]), dim=-1).values
    logq = torch.log_softmax(top, dim=-1)
    return -(logq.exp() * logq).sum(-1)


def weight(f, alpha):
    return (f["entropy_top20"].float().clamp(min=0.0) / SCALE).pow(alpha)


SCHEME = register(Scheme(
    "eaft", "EAFT", "w = (H_top20 / 3) ^ alpha",
    "Entropy-Adaptive Fine-Tuning, arXiv 2601.02151", weight,
    knobs=(Knob("alpha", 1.0, "EAFT: exponent of the entropy weight (default 1)",
                low=0.0, high=10.0),),
    needs=("entropy_top20",)))
