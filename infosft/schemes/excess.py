"""Excess loss against a reference model: Rho-1 (arXiv 2404.07965) and Token Cleaning
(arXiv 2502.01968) keep the tokens whose loss the reference model reduces most.

A token's excess is ``logp_ref - logp`` (the trained model's loss minus the reference's).
``w = 1`` for the ``keep`` share of tokens with the largest excess, 0 for the rest,
ranked over the whole set (a run; a micro-batch when training, as Rho-1 does) or within
each example. Ties are kept in order of position, so exactly ``ceil(keep * n)`` are kept.
"""

from __future__ import annotations

import math

import torch

from infosft.schemes.base import Knob, Scheme, register

PER = ("all", "example")


def _kept(excess: torch.Tensor, group: torch.Tensor, keep: float) -> torch.Tensor:
    """Bool ``(n,)``: the top ``ceil(keep * m)`` tokens of each group by excess, where m
    counts the group's tokens with an excess (NaN is never kept)."""
    out = torch.zeros(excess.shape[0], dtype=torch.bool, device=excess.device)
    if not len(out):
        return out
    valid = ~torch.isnan(excess)
    key = torch.where(valid, excess, torch.full_like(excess, -math.inf))
    # by group, then by excess (largest first), then by position: two stable sorts
    order = torch.sort(key, descending=True, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    _, inverse, counts = torch.unique_consecutive(group[order], return_inverse=True,
                                                  return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    m = torch.zeros(len(counts), dtype=torch.float64, device=out.device)
    m.index_add_(0, inverse, valid[order].double())
    rank = torch.arange(len(out), device=out.device) - starts[inverse]
    out[order] = (rank < torch.ceil(keep * m - 1e-9)[inverse]) & valid[order]
    return out


def weight(f, keep, per):
    logp, ref = f["logp"].float(), f["logp_ref"].float()
    shape = logp.shape
    excess = (ref - logp).reshape(-1)
    excess = torch.where(torch.isfinite(excess), excess, torch.full_like(excess, math.nan))
    if per == "example":
        if "example" not in f:
            raise ValueError("excess with per=example needs each token's example")
        group = f["example"].reshape(-1).long()
    else:
        group = torch.zeros_like(excess, dtype=torch.long)
    return _kept(excess, group, keep).float().reshape(shape)


def on_counts(f, count, keep, per):
    """Weights of a histogram's points (``count`` tokens each, ``f`` their mean logp and
    logp_ref), each the share of the point's tokens kept.

    ``per="all"``: the top ``ceil(keep * m)`` tokens by excess, a point straddling the
    cut keeping its share. ``per="example"``: needs ``f["rank_lo"]`` / ``f["rank_hi"]``,
    each point's bin of within-example rank share u = rank / m (NaN: no excess; the run's
    rank cells, :mod:`analysis.cells`): a token is kept iff u < keep, a bin straddling
    keep keeping its share (exact when keep is a bin edge); None without them.

    >>> f = {"logp": torch.tensor([-1.0, -2.0, -3.0]), "logp_ref": torch.zeros(3)}
    >>> on_counts(f, torch.tensor([2.0, 2.0, 6.0]), keep=0.5, per="all").tolist()
    [0.0, 0.0, 0.8333333134651184]
    >>> u = {"rank_lo": torch.tensor([0.0, 0.5, 0.8, math.nan]),
    ...      "rank_hi": torch.tensor([0.5, 1.0, 0.9, math.nan])}
    >>> on_counts(u, torch.ones(4), keep=0.75, per="example").tolist()
    [1.0, 0.5, 0.0, 0.0]
    """
    if per == "example":
        if "rank_lo" not in f:
            return None
        lo, hi = f["rank_lo"].double(), f["rank_hi"].double()
        share = ((keep - lo) / (hi - lo)).clamp(0.0, 1.0)
        # keep on a bin edge, up to the float32 rounding of the edges (~1e-5 of a bin):
        # whole bins, as on the tokens
        share = torch.where(share < 1e-4, 0.0, torch.where(share > 1 - 1e-4, 1.0, share))
        return torch.nan_to_num(share, nan=0.0).float()
    excess = (f["logp_ref"].double() - f["logp"].double()).reshape(-1)
    c = torch.where(torch.isfinite(excess), count.double().reshape(-1), 0.0)
    k = math.ceil(keep * float(c.sum()) - 1e-9)
    order = torch.sort(torch.where(torch.isfinite(excess), excess, -math.inf),
                       descending=True, stable=True).indices
    before = torch.cumsum(c[order], 0) - c[order]
    kept = torch.minimum((k - before).clamp(min=0), c[order])
    w = torch.zeros_like(c)
    w[order] = torch.where(c[order] > 0, kept / c[order].clamp(min=1e-300), 0.0)
    return w.float().reshape(f["logp"].shape)


SCHEME = register(Scheme(
    "excess", "Excess loss (Rho-1)", "w = 1 for the top keep share by logp_ref - logp, else 0",
    "Rho-1, arXiv 2404.07965; Token Cleaning, arXiv 2502.01968", weight,
    knobs=(Knob("keep", 0.6, "excess: share of tokens kept, the largest logp_ref - logp "
                "(default 0.6, Rho-1's)", low=0.0, high=1.0, open_low=True),
           Knob("per", "all", "excess: rank tokens over the whole set (all; a micro-batch "
                "when training) or within each example", kind=str, choices=PER)),
    needs=("logp", "logp_ref"), per_token=False, on_counts=on_counts))
