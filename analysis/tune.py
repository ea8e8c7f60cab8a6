"""What the Overview and Tune pages show for one set of knobs: weight curves, q
histograms weighted by each scheme, the scheme summary and an "auto C" suggestion.

Everything is vectorized over the run's cached :class:`analysis.stats.Targets`
(numpy reductions, no per-token Python); the results are small frames (a few
hundred rows) that are cheap to send to the browser.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl
import torch

from infosft.analysis.stats import Targets
from infosft.schemes import BUILTIN, get as get_scheme
from infosft.weights import DEFAULT_MIDDLE, DEFAULT_P, DEFAULT_THRESHOLD, c_from_p, weight_curve

#: The knobs :class:`Settings` holds in fields of their own (InfoSFT's C, ProFit's).
FIXED = {"infosft": ("C",), "profit": ("threshold", "direction", "seed")}

#: auto C: the quantile of target q that becomes InfoSFT's zero-weight cut P, and its range.
#: The median since session 9: on three data sets (the miniature task, GSM8K rows, the
#: bundled sample; docs/benchmarks.md) the 75% quantile the rule used before landed on a
#: dominated run every time, and lower P did better on both axes down to 0.6.
AUTO_QUANTILE = 0.5
AUTO_P_RANGE = (0.6, 0.99)


@dataclass(frozen=True)
class Settings:
    """All knobs of all schemes, as a UI holds them (one scheme is "chosen").

    InfoSFT's C and ProFit's knobs have fields of their own (``middle``: ProFit's pair
    for direction middle); every other scheme's knobs (EAFT's alpha, excess' keep and
    per, a user's ``module:function`` knobs) live in ``extra``, ``(scheme, knob, value)``
    triples, and default to their :class:`infosft.schemes.Knob` declarations."""

    scheme: str = "infosft"
    C: float = field(default_factory=lambda: round(c_from_p(DEFAULT_P), 4))
    threshold: float = DEFAULT_THRESHOLD
    middle: tuple[float, float] = DEFAULT_MIDDLE
    direction: str = "higher"
    seed: int = 0
    extra: tuple[tuple[str, str, Any], ...] = ()

    def value(self, scheme: str, knob: str) -> Any:
        """The value of one knob of ``scheme``: its field, its entry in ``extra``, else its
        declared default."""
        if knob in FIXED.get(scheme, ()):
            return getattr(self, knob)
        for sc, name, v in self.extra:
            if sc == scheme and name == knob:
                return v
        for k in get_scheme(scheme).knobs:
            if k.name == knob:
                return k.default
        raise ValueError(f"scheme {scheme!r} has no knob {knob!r}")

    def with_knob(self, scheme: str, knob: str, value: Any) -> "Settings":
        """These settings with one knob of ``scheme`` set."""
        if knob in FIXED.get(scheme, ()):
            return replace(self, **{knob: value})
        if knob not in get_scheme(scheme).knob_names:
            raise ValueError(f"scheme {scheme!r} has no knob {knob!r}")
        rest = tuple(t for t in self.extra if (t[0], t[1]) != (scheme, knob))
        return replace(self, extra=rest + ((scheme, knob, value),))

    def knobs(self, scheme: str | None = None) -> dict[str, Any]:
        """The keyword knobs of ``scheme`` (default: the chosen one) for ``infosft.weights``;
        any registered scheme, a user's ``module:function`` too."""
        scheme = scheme or self.scheme
        if scheme == "infosft":
            return {"C": float(self.C)}
        if scheme == "profit":
            tau = list(self.middle) if self.direction == "middle" else float(self.threshold)
            return {"threshold": tau, "direction": self.direction, "seed": int(self.seed)}
        out = {}
        for k in get_scheme(scheme).knobs:
            v = self.value(scheme, k.name)
            if v is not None:
                out[k.name] = v
        return out

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def curve_schemes(settings: Settings, schemes: list[str] | tuple[str, ...] | None = None
                  ) -> list[str]:
    """The schemes that have a curve ``w(q)`` (functions of q alone) among ``schemes``
    (default: the built-ins and the chosen one)."""
    schemes = list(dict.fromkeys([*BUILTIN, settings.scheme])) if schemes is None else schemes
    return [s for s in schemes if get_scheme(s).q_only]


def weight_curves(settings: Settings, *, log_x: bool = False, n: int = 300,
                  min_log10: float = -6.0,
                  schemes: list[str] | tuple[str, ...] | None = None) -> pl.DataFrame:
    """``q`` and one column per scheme of q alone (:func:`curve_schemes`): ``w(q)`` on a
    grid (log-spaced with ``log_x``). EAFT and excess read more than q: no curve.

    ProFit's ``random`` direction has no curve (it drops tokens at random whatever q);
    its expected weight ``1 - tau`` is drawn instead.
    """
    q = np.logspace(min_log10, 0, n) if log_x else np.linspace(0, 1, n)
    qt = torch.from_numpy(q)
    out = {"q": q}
    for scheme in curve_schemes(settings, schemes):
        knobs = settings.knobs(scheme)
        if scheme == "profit" and settings.direction == "random":
            out[scheme] = np.full(n, 1.0 - settings.threshold)
        else:
            out[scheme] = weight_curve(qt, scheme, **knobs).numpy().astype(np.float64)
    return pl.DataFrame(out)


def run_schemes(targets: Targets, settings: Settings) -> list[str]:
    """The schemes shown side by side for a run: the built-ins it supports
    (:meth:`Targets.schemes`, with these knobs), and the chosen one when it is a user's
    and supported."""
    return targets.schemes(extra=(settings.scheme,), knobs=settings.knobs)


def all_weights(targets: Targets, settings: Settings) -> dict[str, np.ndarray]:
    """Weights ``(n,)`` of every target token under each scheme of :func:`run_schemes`
    (each of ``targets.over(scheme, knobs)``: for a binned run, the cells of the fields
    the scheme reads)."""
    return {s: targets.weights(s, **settings.knobs(s)) for s in run_schemes(targets, settings)}


def weighted_histogram(targets: Targets, weights: dict[str, np.ndarray], settings: Settings,
                       *, bins: int = 50, log_x: bool = False) -> pl.DataFrame:
    """``lo``, ``hi``, ``count`` and, per scheme, the share of that scheme's total weight
    that falls in each q bin (where the learning signal goes): ``weights`` as
    :func:`all_weights` gives them for ``settings``, whose knobs chose each scheme's
    Targets."""
    hist = targets.histogram(bins=bins, log_x=log_x)
    cols = []
    for scheme, w in weights.items():
        t = targets.over(scheme, settings.knobs(scheme))
        per_bin = t.histogram(bins=bins, log_x=log_x, w=w)["weight"]
        total = float(per_bin.sum())
        cols.append((per_bin / total if total > 0 else per_bin * 0).alias(scheme))
    return hist.with_columns(cols)


def auto_c(targets: Targets) -> dict[str, Any]:
    """A data-driven C: P = the median of target q, clipped to [0.6, 0.99].

    Returns ``C``, ``P`` and a one-line ``rule`` explaining it.
    """
    if not len(targets):
        P = DEFAULT_P
    else:
        # the logp quantile equals log of the q quantile (exp is monotone)
        P = float(np.exp(targets.quantile(AUTO_QUANTILE)))
        P = float(np.clip(P, *AUTO_P_RANGE))
    return {"C": c_from_p(P), "P": P,
            "rule": (f"P = the median q of the target tokens (clipped to {AUTO_P_RANGE[0]}–"
                     f"{AUTO_P_RANGE[1]}): the half the base model is surest of gets weight 0, "
                     "the rest keep InfoSFT's medium-q emphasis. Checked against sweeps on "
                     "three data sets, where a lower P forgot less and learned more than "
                     "the 75% quantile used before.")}


def overview_facts(targets: Targets, examples: pl.DataFrame) -> dict[str, Any]:
    """Scheme-free metric cards: counts, mean / median q, shares of q > 0.9 and q < 0.1."""
    facts = {"examples": examples.height, "target_tokens": len(targets),
             "tokens": int(examples["n_tokens"].sum()) if examples.height else 0,
             "truncated": int(examples["truncated"].sum()) if examples.height else 0}
    if len(targets):
        facts.update(targets.q_facts())
    return facts


SCHEME_TABLE = {"scheme": pl.String, "mean_weight": pl.Float64, "share_nonzero": pl.Float64,
                "effective_tokens": pl.Float64, "effective_share": pl.Float64,
                "weight_share_low": pl.Float64, "weight_share_medium": pl.Float64,
                "weight_share_high": pl.Float64}


def scheme_table(summaries: list[dict[str, Any]]) -> pl.DataFrame:
    """The schemes side by side from their :meth:`Targets.summary` dicts, one row each
    with the knobs in force: mean weight, share of tokens with w > 0, effective tokens
    (sum(w)^2 / sum(w^2)) and their share, and the share of the weight on low / medium /
    high q."""
    return pl.DataFrame([{k: r[k] for k in SCHEME_TABLE} for r in summaries],
                        schema=SCHEME_TABLE)


def tune_view(targets: Targets, settings: Settings, *, bins: int = 50,
              log_x: bool = False) -> dict[str, Any]:
    """Everything that changes when a knob moves: the chosen scheme's summary (None when
    the run cannot be weighted by it: ``targets.missing(settings.scheme)`` says why),
    every supported scheme's summary side by side (:func:`run_schemes`), the weighted
    histogram of those schemes and the weight curves of those of q alone."""
    ws = all_weights(targets, settings)
    sums = {s: targets.summary(s, w=w, **settings.knobs(s)) for s, w in ws.items()}
    return {"summary": sums.get(settings.scheme),
            "schemes": scheme_table(list(sums.values())),
            "weights": ws,
            "hist": weighted_histogram(targets, ws, settings, bins=bins, log_x=log_x),
            "curves": weight_curves(settings, log_x=log_x, schemes=list(ws))}
