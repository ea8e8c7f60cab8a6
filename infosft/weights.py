"""The token-weighting schemes: the one place their formulas live.

Every scheme maps the log-probability ``logp`` of a supervised target token
(under the model whose loss is weighted) to a weight ``w``; the weighted SFT
loss is ``sum_t w_t * (-logp_t) / N``. Weights carry no gradient.

==========  =====================================================  ==========================
scheme      w                                                      knobs (defaults)
==========  =====================================================  ==========================
``sft``     1                                                      none
``dft``     q                                                      none
``infosft`` q * max(0, 1 - logit(q) / C)                           ``C`` > 0, or ``P`` in
                                                                   (0.5, 1), C = logit(P);
                                                                   default P = 0.93
``profit``  1 where kept, 0 where dropped                          ``threshold`` = 0.1,
                                                                   ``direction`` = "higher",
                                                                   ``seed`` = 0
==========  =====================================================  ==========================

with ``q = exp(logp)`` and ``logit(q) = log(q / (1 - q))``, computed from logp
as ``logp - log(-expm1(logp))`` so that q -> 1 gives 0 rather than NaN.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

#: q band edges: low q < 0.1 <= medium < 0.9 <= high. 0.1 is ProFit's default tau;
#: q > 0.9 is "the base model already knows this token". The analysis pages and the
#: training logs both split by these.
Q_BANDS = (0.1, 0.9)
BAND_NAMES = ("low", "medium", "high")

SCHEMES = ("sft", "dft", "infosft", "profit")
DIRECTIONS = ("higher", "lower", "middle", "random")
DEFAULT_P = 0.93
DEFAULT_THRESHOLD = 0.1
DEFAULT_MIDDLE = (0.1, 0.9)

_SCHEME_KNOBS = {
    "sft": (),
    "dft": (),
    "infosft": ("C", "P"),
    "profit": ("threshold", "direction", "seed"),
}
_ALL_KNOBS = {k for ks in _SCHEME_KNOBS.values() for k in ks}


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


def resolve_knobs(scheme: str, **knobs: Any) -> dict[str, Any]:
    """Validate a scheme's knobs and fill in defaults.

    Knobs that are None are ignored, as are knobs of another scheme (so a UI can
    pass its whole state); an unknown knob name is an error.

    Returns the canonical knobs recorded in metadata: ``{}`` for sft/dft,
    ``{"C": float, "P": float}`` for infosft, ``{"threshold": float | [low, high],
    "direction": str, "seed": int}`` for profit.

    Raises:
        ValueError: naming the knob and its allowed range.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    unknown = sorted(set(knobs) - _ALL_KNOBS)
    if unknown:
        raise ValueError(f"unknown knob {unknown[0]!r} for scheme {scheme!r}; "
                         f"knobs are {', '.join(_SCHEME_KNOBS[scheme]) or 'none'}")
    given = {k: v for k, v in knobs.items() if v is not None and k in _SCHEME_KNOBS[scheme]}
    if scheme == "infosft":
        return _resolve_infosft(given.get("C"), given.get("P"))
    if scheme == "profit":
        return _resolve_profit(given.get("threshold"), given.get("direction", "higher"),
                               given.get("seed", 0))
    return {}


# Weights are float32: C is used in float32 arithmetic, so it must be a normal float32.
# Above C_MAX, C rounds to inf (and logit(1) / C to NaN); from C_MIN up, q * logit(q) / C
# stays below 0.28 / C_MIN, finite (see token_weights). P in (0.5, 1) always gives such a C.
C_MIN = float(torch.finfo(torch.float32).tiny)   # ~1.2e-38
C_MAX = float(torch.finfo(torch.float32).max)    # ~3.4e38


def _resolve_infosft(C: float | None, P: float | None) -> dict[str, float]:
    if C is not None and P is not None:
        raise ValueError("give InfoSFT's C or P, not both (C = log(P / (1 - P)))")
    if C is not None:
        C = _number("C", C)
        if not (C > 0 and math.isfinite(C)):
            raise ValueError(f"C must be a finite number > 0, got {C}")
        if not C_MIN <= C <= C_MAX:
            raise ValueError(f"C must be between {C_MIN:.3g} and {C_MAX:.3g} (float32's "
                             f"normal range), got {C}")
        return {"C": C, "P": p_from_c(C)}
    P = DEFAULT_P if P is None else _number("P", P)
    if not 0.5 < P < 1:
        raise ValueError(f"P must be in (0.5, 1) (exclusive), got {P}")
    return {"C": c_from_p(P), "P": P}


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # (numpy's too)
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        raise ValueError(f"{name} must be a finite number, got {value}") from None


def _resolve_profit(threshold: Any, direction: str, seed: Any) -> dict[str, Any]:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown ProFit direction {direction!r}: choose one of "
                         f"{', '.join(DIRECTIONS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -2 ** 63 <= seed < 2 ** 63:
        raise ValueError(f"seed must be a 64-bit integer, got {seed!r}")
    if direction == "middle":
        if threshold is None:
            threshold = DEFAULT_MIDDLE
        if isinstance(threshold, (int, float)) or len(threshold) != 2:
            raise ValueError("threshold for direction 'middle' must be a (low, high) pair "
                             f"with 0 <= low < high <= 1, got {threshold!r}")
        low, high = (_number("threshold", t) for t in threshold)
        if not 0 <= low < high <= 1:
            raise ValueError("threshold for direction 'middle' must satisfy "
                             f"0 <= low < high <= 1, got ({low}, {high})")
        return {"threshold": [low, high], "direction": direction, "seed": seed}
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold for direction {direction!r} must be one number in "
                         f"[0, 1], got {threshold!r}")
    threshold = _number("threshold", threshold)
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return {"threshold": threshold, "direction": direction, "seed": seed}


def stable_logit(logp: torch.Tensor) -> torch.Tensor:
    """``log(q / (1 - q))`` from ``logp = log q`` without cancellation.

    Args:
        logp: any shape, values <= 0 (``-inf`` allowed).

    Returns:
        Same shape: ``+inf`` where logp == 0, ``-inf`` where logp == -inf.
    """
    return logp - torch.log(-torch.expm1(logp))


@torch.no_grad()
def token_weights(logp: torch.Tensor, scheme: str, **knobs: Any) -> torch.Tensor:
    """Per-token weights of a scheme.

    Args:
        logp: ``(*)`` log-probabilities of the target tokens, any float dtype,
            values <= 0 (tiny positive rounding errors are clamped), ``-inf`` allowed.
        scheme: one of ``sft``, ``dft``, ``infosft``, ``profit``.
        **knobs: see :func:`resolve_knobs`.

    Returns:
        ``(*)`` float32 weights, detached, never NaN for finite or -inf logp.
    """
    k = resolve_knobs(scheme, **knobs)
    logp = logp.detach().float().clamp(max=0.0)
    if scheme == "sft":
        return torch.ones_like(logp)
    q = logp.exp()
    if scheme == "dft":
        return q
    if scheme == "infosft":
        # q - q * logit(q) / C, not q * (1 - logit(q) / C): logit(q) / C alone overflows
        # float32 for tiny C (logit(1e-30) / 1e-38), while q * logit(q) >= -0.28, so the
        # weight is at most q + 0.28 / C: finite for every C >= C_MIN.
        w = (q - q * stable_logit(logp) / k["C"]).clamp(min=0.0)
        # q == 0 (logp = -inf) would give 0 * inf; the limit is 0.
        return torch.where(q > 0, w, torch.zeros_like(q))
    return _profit_keep(q, k).float()


def _profit_keep(q: torch.Tensor, k: dict[str, Any]) -> torch.Tensor:
    """Bool mask ``(*)`` of the tokens ProFit keeps."""
    direction, tau = k["direction"], k["threshold"]
    if direction == "higher":
        return q >= tau
    if direction == "lower":
        return q <= tau
    if direction == "middle":
        return (q >= tau[0]) & (q <= tau[1])
    gen = torch.Generator(device="cpu").manual_seed(k["seed"])
    drop = torch.rand(q.shape, generator=gen) < tau
    return ~drop.to(q.device)


def weight_curve(q: torch.Tensor, scheme: str, **knobs: Any) -> torch.Tensor:
    """Weight as a function of probability, for plotting ``w(q)``.

    Args:
        q: ``(n,)`` probabilities in [0, 1].

    Returns:
        ``(n,)`` float32 weights.
    """
    return token_weights(torch.log(q.double()), scheme, **knobs)
