"""ProFit: keep the tokens on one side of a probability threshold, drop (w = 0) the rest.

``direction`` higher keeps q >= tau (the default: drop the low-probability tokens),
lower keeps q <= tau, middle keeps low <= q <= high, random drops each token with
probability tau (a control: the same share dropped, blind to q).
"""

from __future__ import annotations

from typing import Any

import torch

from infosft.schemes.base import Knob, Scheme, register
from infosft.schemes.infosft_scheme import number

DIRECTIONS = ("higher", "lower", "middle", "random")
DEFAULT_THRESHOLD = 0.1
DEFAULT_MIDDLE = (0.1, 0.9)


def resolve(given: dict[str, Any]) -> dict[str, Any]:
    threshold, direction = given.get("threshold"), given.get("direction", "higher")
    seed = given.get("seed", 0)
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
        low, high = (number("threshold", t) for t in threshold)
        if not 0 <= low < high <= 1:
            raise ValueError("threshold for direction 'middle' must satisfy "
                             f"0 <= low < high <= 1, got ({low}, {high})")
        return {"threshold": [low, high], "direction": direction, "seed": seed}
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold for direction {direction!r} must be one number in "
                         f"[0, 1], got {threshold!r}")
    threshold = number("threshold", threshold)
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return {"threshold": threshold, "direction": direction, "seed": seed}


def keep_mask(q: torch.Tensor, threshold: Any, direction: str, seed: int) -> torch.Tensor:
    """Bool mask ``(*)`` of the tokens ProFit keeps."""
    if direction == "higher":
        return q >= threshold
    if direction == "lower":
        return q <= threshold
    if direction == "middle":
        return (q >= threshold[0]) & (q <= threshold[1])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    drop = torch.rand(q.shape, generator=gen) < threshold
    return ~drop.to(q.device)


def weight(f, threshold, direction, seed):
    return keep_mask(f["logp"].exp(), threshold, direction, seed).float()


SCHEME = register(Scheme(
    "profit", "ProFit", "w = 1 where q is kept (q >= tau by default), else 0",
    "ProFit (probability-based token selection)", weight,
    knobs=(Knob("threshold", DEFAULT_THRESHOLD, "ProFit: tau in [0, 1] (default 0.1), or "
                "[low, high] for direction middle", low=0.0, high=1.0),
           Knob("direction", "higher", "ProFit: which tokens to keep (default higher: "
                "q >= tau)", kind=str, choices=DIRECTIONS),
           Knob("seed", 0, "ProFit random: seed (default 0)", kind=int)),
    resolve=resolve))
