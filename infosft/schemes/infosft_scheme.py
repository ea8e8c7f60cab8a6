"""InfoSFT: ``w = q * max(0, 1 - logit(q) / C)``: DFT's weight, cut to 0 above q = P.

One knob with two faces: C > 0, or P in (0.5, 1) with C = logit(P) (the probability
above which a token gets no weight). Default P = 0.93.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from infosft.schemes.base import Knob, Scheme, register

DEFAULT_P = 0.93
# Weights are float32: C is used in float32 arithmetic, so it must be a normal float32.
# Above C_MAX, C rounds to inf (and logit(1) / C to NaN); from C_MIN up, q * logit(q) / C
# stays below 0.28 / C_MIN, finite (see weight). P in (0.5, 1) always gives such a C.
C_MIN = float(torch.finfo(torch.float32).tiny)   # ~1.2e-38
C_MAX = float(torch.finfo(torch.float32).max)    # ~3.4e38


def c_from_p(P: float) -> float:
    """The C at which InfoSFT's weight reaches 0: ``C = log(P / (1 - P))``."""
    if not 0.5 < P < 1:
        raise ValueError(f"P must be in (0.5, 1), got {P}")
    return math.log(P / (1 - P))


def p_from_c(C: float) -> float:
    """The probability above which InfoSFT gives weight 0: ``P = sigmoid(C)``."""
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    return 1 / (1 + math.exp(-C))


def stable_logit(logp: torch.Tensor) -> torch.Tensor:
    """``log(q / (1 - q))`` from ``logp = log q`` without cancellation.

    Args:
        logp: any shape, values <= 0 (``-inf`` allowed).

    Returns:
        Same shape: ``+inf`` where logp == 0, ``-inf`` where logp == -inf.
    """
    return logp - torch.log(-torch.expm1(logp))


def number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # (numpy's too)
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        raise ValueError(f"{name} must be a finite number, got {value}") from None


def resolve(given: dict[str, Any]) -> dict[str, float]:
    C, P = given.get("C"), given.get("P")
    if C is not None and P is not None:
        raise ValueError("give InfoSFT's C or P, not both (C = log(P / (1 - P)))")
    if C is not None:
        C = number("C", C)
        if not (C > 0 and math.isfinite(C)):
            raise ValueError(f"C must be a finite number > 0, got {C}")
        if not C_MIN <= C <= C_MAX:
            raise ValueError(f"C must be between {C_MIN:.3g} and {C_MAX:.3g} (float32's "
                             f"normal range), got {C}")
        return {"C": C, "P": p_from_c(C)}
    P = DEFAULT_P if P is None else number("P", P)
    if not 0.5 < P < 1:
        raise ValueError(f"P must be in (0.5, 1) (exclusive), got {P}")
    return {"C": c_from_p(P), "P": P}


def weight(f, C: float, P: float | None = None):
    logp = f["logp"]
    q = logp.exp()
    # q - q * logit(q) / C, not q * (1 - logit(q) / C): logit(q) / C alone overflows
    # float32 for tiny C (logit(1e-30) / 1e-38), while q * logit(q) >= -0.28, so the
    # weight is at most q + 0.28 / C: finite for every C >= C_MIN.
    w = (q - q * stable_logit(logp) / C).clamp(min=0.0)
    # q == 0 (logp = -inf) would give 0 * inf; the limit is 0.
    return torch.where(q > 0, w, torch.zeros_like(q))


SCHEME = register(Scheme(
    "infosft", "InfoSFT", "w = q * max(0, 1 - logit(q) / C)",
    "InfoSFT (information-weighted SFT); C = logit(P)", weight,
    knobs=(Knob("C", None, "InfoSFT: C > 0 (or give P)", open_low=True, low=0.0, high=C_MAX),
           Knob("P", DEFAULT_P, "InfoSFT: P in (0.5, 1); C = log(P/(1-P)); default 0.93",
                low=0.5, high=1.0, open_low=True, open_high=True)),
    resolve=resolve))
