"""Token weights: the one entry point to the schemes' formulas (:mod:`infosft.schemes`).

Every scheme maps the per-token fields of a supervised target token (its log-probability
``logp`` under the model whose loss is weighted, and for some schemes more: see
:data:`infosft.schemes.FIELDS`) to a weight ``w``; the weighted SFT loss is
``sum_t w_t * (-logp_t) / N``. Weights carry no gradient.

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
``eaft``    (H_top20 / 3) ^ alpha  (H_top20: entropy of the top    ``alpha`` = 1
            20 next-token probabilities, renormalized)
``excess``  1 for the ``keep`` share of tokens with the largest    ``keep`` = 0.6,
            ``logp_ref - logp``, else 0 (Rho-1)                    ``per`` = "all"
==========  =====================================================  ==========================

with ``q = exp(logp)`` and ``logit(q) = log(q / (1 - q))``, computed from logp
as ``logp - log(-expm1(logp))`` so that q -> 1 gives 0 rather than NaN. A user's scheme
is named ``module:function`` (see :func:`infosft.schemes.load_custom`).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from infosft.schemes import BUILTIN, all_knob_names, get as get_scheme
from infosft.schemes.infosft_scheme import (C_MAX, C_MIN, DEFAULT_P, c_from_p,  # noqa: F401
                                            p_from_c, stable_logit)
from infosft.schemes.profit import DEFAULT_MIDDLE, DEFAULT_THRESHOLD, DIRECTIONS  # noqa: F401

#: q band edges: low q < 0.1 <= medium < 0.9 <= high. 0.1 is ProFit's default tau;
#: q > 0.9 is "the base model already knows this token". The analysis pages and the
#: training logs both split by these.
Q_BANDS = (0.1, 0.9)
BAND_NAMES = ("low", "medium", "high")

#: The built-in schemes, in display order.
SCHEMES = BUILTIN
#: The built-ins whose weight is a function of q alone (they have a curve w(q)).
Q_SCHEMES = tuple(s for s in BUILTIN if get_scheme(s).q_only)


def resolve_knobs(scheme: str, **knobs: Any) -> dict[str, Any]:
    """Validate a scheme's knobs and fill in defaults.

    Knobs that are None are ignored, as are knobs of another scheme (so a UI can
    pass its whole state); an unknown knob name is an error.

    Returns the canonical knobs recorded in metadata: ``{}`` for sft/dft,
    ``{"C": float, "P": float}`` for infosft, ``{"threshold": float | [low, high],
    "direction": str, "seed": int}`` for profit, ``{"alpha": float}`` for eaft,
    ``{"keep": float, "per": str}`` for excess.

    Raises:
        ValueError: naming the knob and its allowed range.
    """
    s = get_scheme(scheme)
    unknown = sorted(set(knobs) - all_knob_names())
    if unknown:
        raise ValueError(f"unknown knob {unknown[0]!r} for scheme {scheme!r}; "
                         f"knobs are {', '.join(s.knob_names) or 'none'}")
    return s.resolve_knobs({k: v for k, v in knobs.items()
                            if v is not None and k in s.knob_names})


def check_own_knobs(scheme: str, names) -> None:
    """ValueError unless every knob in ``names`` is ``scheme``'s own: knobs given for one
    scheme by name (``--knob``, a config's ``knobs``), unlike a UI's whole state that
    :func:`resolve_knobs` takes, must not be another scheme's (whatever is registered)."""
    own = get_scheme(scheme).knob_names
    stray = sorted(k for k in names if k not in own)
    if stray:
        raise ValueError(f"unknown knob {stray[0]!r} for scheme {scheme!r}; its knobs are "
                         f"{', '.join(own) or 'none'}")


def needed_fields(scheme: str) -> tuple[str, ...]:
    """The per-token fields a scheme reads beyond ``logp`` (e.g. ``entropy_top20``)."""
    return get_scheme(scheme).extra_fields


@torch.no_grad()
def token_weights(logp: torch.Tensor, scheme: str,
                  fields: Mapping[str, torch.Tensor] | None = None, **knobs: Any) -> torch.Tensor:
    """Per-token weights of a scheme.

    Args:
        logp: ``(*)`` log-probabilities of the target tokens, any float dtype,
            values <= 0 (tiny positive rounding errors are clamped), ``-inf`` allowed.
        scheme: a registered name (``sft``, ``dft``, ``infosft``, ``profit``, ``eaft``,
            ``excess``) or ``module:function``.
        fields: the other per-token fields the scheme needs, each ``(*)``
            (:func:`needed_fields`), and optionally ``example`` ``(*)`` int.
        **knobs: see :func:`resolve_knobs`.

    Returns:
        ``(*)`` float32 weights, detached.

    Raises:
        ValueError: a bad knob, or a field the scheme needs is missing.
    """
    s = get_scheme(scheme)
    k = resolve_knobs(scheme, **knobs)
    f = {"logp": logp.detach().float().clamp(max=0.0)}
    for name, value in (fields or {}).items():
        f[name] = value.detach() if name == "example" else value.detach().float()
    missing = [n for n in s.needs if n not in f]
    if missing:
        raise ValueError(f"scheme {scheme!r} needs each token's {missing[0]}, which this "
                         f"data does not have ({_where(missing[0])})")
    w = s.weight(f, **k)
    return w.detach().float()


def _where(name: str) -> str:
    return {"entropy_top20": "runs scored by this version of `infosft score` have it",
            "logp_ref": "score with `infosft score --reference MODEL`"}.get(name, name)


def weight_curve(q: torch.Tensor, scheme: str, **knobs: Any) -> torch.Tensor:
    """Weight as a function of probability, for plotting ``w(q)`` (q-only schemes).

    Args:
        q: ``(n,)`` probabilities in [0, 1].

    Returns:
        ``(n,)`` float32 weights.
    """
    if not get_scheme(scheme).q_only:
        raise ValueError(f"scheme {scheme!r} is not a function of q alone: it has no w(q) curve")
    return token_weights(torch.log(q.double()), scheme, **knobs)
