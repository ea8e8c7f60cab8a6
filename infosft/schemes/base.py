"""What a token-weighting scheme is, and the registry that every layer reads.

A :class:`Scheme` declares its name, label, citation, knobs (:class:`Knob`: type,
range, default, help), the per-token fields it needs (:data:`FIELDS`) and its weight
function. The CLI flags, the app's widgets and curves, the statistics, the export and
the training loss all look schemes up here (:func:`get`), so adding one is one small
module that calls :func:`register` (see ``infosft/schemes/eaft.py``), or a Python
callable named ``module:function`` that :func:`get` loads and checks on first use.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch

#: Per-token fields a weight function may read, each a ``(*)`` tensor aligned with ``logp``.
FIELDS = {
    "logp": "log-probability of the target token under the model whose loss is weighted",
    "entropy_top20": "entropy (nats) of that model's 20 most likely next tokens, "
                     "renormalized (EAFT's H_top20)",
    "logp_ref": "log-probability of the target token under a reference model "
                "(`infosft score --reference`, `infosft train --reference`)",
    "example": "int: which example each token belongs to (a batch row when training)",
}
#: Fields that are always at hand (a scheme never makes a run or batch unusable by them).
ALWAYS = frozenset({"logp", "example"})


@dataclass(frozen=True)
class Knob:
    """One knob of a scheme: ``kind`` float, int or str; numbers within ``[low, high]``
    (``open_low`` / ``open_high`` exclude the end), strings one of ``choices``."""

    name: str
    default: Any
    help: str
    kind: type = float
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        lo = "(" if self.open_low else "["
        hi = ")" if self.open_high else "]"
        return (f"in {lo}{self.low:g}, {self.high:g}{hi}" if self.low is not None
                and self.high is not None else "a number")

    def check(self, value: Any) -> Any:
        """``value`` as this knob's canonical type; ValueError naming the knob and its range."""
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise ValueError(f"{self.name} must be {self.range_text()}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        if self.kind is int:
            if int(value) != value:
                raise ValueError(f"{self.name} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{self.name} must be a finite number, got {value}")
        lo_bad = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        hi_bad = self.high is not None and (value >= self.high if self.open_high
                                            else value > self.high)
        if lo_bad or hi_bad:
            raise ValueError(f"{self.name} must be {self.range_text()}, got {value:g}")
        return value


Weight = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Scheme:
    """A token-weighting scheme.

    Args:
        name: what the CLI, configs and metadata call it.
        label: what the app shows.
        formula: ``w = ...`` in one line.
        citation: where it comes from.
        weight: ``weight(f, **knobs) -> (*) tensor`` of float weights >= 0, where ``f``
            maps each name of ``needs`` (and ``example`` where known) to a ``(*)`` tensor.
        knobs: its knobs, in the order a UI shows them.
        needs: the :data:`FIELDS` it reads.
        per_token: whether a token's weight depends on its own fields only. False for a
            selection over a set (the top k% of a batch or an example): then the weights of
            a set are not the weights of its parts, and no curve ``w(q)`` exists.
        resolve: optional ``resolve(given) -> canonical knobs`` for knobs that depend on each
            other (InfoSFT's C or P); the default checks each :class:`Knob` and fills defaults.
        on_counts: for a scheme that is not ``per_token``, its weights over a histogram:
            ``on_counts(f, count, **knobs) -> (n,)`` where each of ``n`` points stands for
            ``count`` tokens (``f``: their mean fields) and a weight is the share of the
            point's tokens selected; None for knobs that need the tokens themselves. A
            selection within each example by excess gets ``f["rank_lo"]`` /
            ``f["rank_hi"]`` too on a run's rank cells: each point's bin of the tokens'
            within-example rank share (:meth:`on_ranks`). Without it such a scheme needs
            the tokens.
    """

    name: str
    label: str
    formula: str
    citation: str
    weight: Weight
    knobs: tuple[Knob, ...] = ()
    needs: tuple[str, ...] = ("logp",)
    per_token: bool = True
    resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, repr=False)
    on_counts: Callable[..., torch.Tensor | None] | None = field(default=None, repr=False)

    @property
    def knob_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    @property
    def q_only(self) -> bool:
        """Whether the weight is a function of q alone (then it has a curve ``w(q)``, and
        a histogram of logp is enough to summarize it)."""
        return self.per_token and set(self.needs) <= {"logp"}

    def on_histogram(self, knobs: Mapping[str, Any]) -> bool:
        """Whether these (resolved) ``knobs``' weights can be computed from a histogram of
        the fields (a large run's cells) rather than the tokens: always for a per-token
        scheme; for a selection, when :attr:`on_counts` handles them."""
        if self.per_token:
            return True
        if self.on_counts is None:
            return False
        empty = {n: torch.zeros(0) for n in self.needs}
        return self.on_counts(empty, torch.zeros(0, dtype=torch.float64), **knobs) is not None

    def on_ranks(self, knobs: Mapping[str, Any]) -> bool:
        """Whether these (resolved) ``knobs``' weights need, and can be computed from, a
        histogram of each token's within-example rank share by excess ``logp_ref - logp``
        (a run's rank cells: excess ranked per example) rather than of its fields."""
        if self.per_token or self.on_counts is None or self.on_histogram(knobs):
            return False
        ranks = {**{n: torch.zeros(0) for n in self.needs},
                 "rank_lo": torch.zeros(0, dtype=torch.float64),
                 "rank_hi": torch.zeros(0, dtype=torch.float64)}
        return self.on_counts(ranks, torch.zeros(0, dtype=torch.float64), **knobs) is not None

    @property
    def extra_fields(self) -> tuple[str, ...]:
        """The fields it needs beyond what is always at hand."""
        return tuple(f for f in self.needs if f not in ALWAYS)

    def resolve_knobs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Canonical knobs from the ``given`` ones (None-free, this scheme's only)."""
        if self.resolve is not None:
            return self.resolve(dict(given))
        return {k.name: k.check(given[k.name] if k.name in given else k.default)
                for k in self.knobs}


_REGISTRY: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    """Add a scheme; its name must be new (a built-in cannot be replaced by accident)."""
    old = _REGISTRY.get(scheme.name)
    if old is not None and old is not scheme:
        raise ValueError(f"a scheme named {scheme.name!r} is already registered")
    unknown = sorted(set(scheme.needs) - set(FIELDS))
    if unknown:
        raise ValueError(f"scheme {scheme.name!r} needs unknown field {unknown[0]!r}; "
                         f"fields are {', '.join(FIELDS)}")
    _REGISTRY[scheme.name] = scheme
    return scheme


def names() -> tuple[str, ...]:
    """Registered schemes, built-ins first, in registration order."""
    return tuple(_REGISTRY)


def all_knob_names() -> frozenset[str]:
    return frozenset(k for s in _REGISTRY.values() for k in s.knob_names)


def get(name: str) -> Scheme:
    """The scheme called ``name``; ``module:function`` loads (and checks) a user's callable.

    Raises:
        ValueError: an unknown name, or a callable that does not load or fails its check.
    """
    if not isinstance(name, str):
        raise ValueError(f"a scheme name must be text, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return register(load_custom(name))
    raise ValueError(f"unknown scheme {name!r}: choose one of {', '.join(_REGISTRY)}, "
                     "or name your own as module:function")


# --- a user's scheme: module:function --------------------------------------------------

def load_custom(spec: str) -> Scheme:
    """A scheme from ``module:attr``: a :class:`Scheme`, or a function whose parameters
    name the fields it reads (``logp``, ``entropy_top20``, ``logp_ref``, ``example``) and
    whose keyword parameters with defaults are its knobs, e.g.::

        def focal(logp, gamma=2.0):          # w = (1 - q)^gamma
            return (1 - logp.exp()) ** gamma

    The module is imported as Python imports it, with the working directory on the path
    (the user's own file). The function is run once on a probe of every q from 1e-6 to 1
    with its default knobs: it must return a tensor of the probe's shape, finite, >= 0.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in
                                              module_name.split(".") + attr.split(".")):
        raise ValueError(f"scheme {spec!r}: expected module:function (e.g. myschemes:focal)")
    try:
        obj = _import_attr(module_name, attr)
    except Exception as e:  # noqa: BLE001 - any import-time error of user code: one line
        raise ValueError(f"scheme {spec!r}: cannot load it ({type(e).__name__}: {e})") from None
    if isinstance(obj, Scheme):
        scheme = replace(obj, name=spec)
    elif callable(obj):
        scheme = _scheme_of_function(spec, obj)
    else:
        raise ValueError(f"scheme {spec!r}: {attr} is a {type(obj).__name__}, not a function "
                         "or an infosft Scheme")
    _probe(scheme)
    return scheme


def _import_attr(module_name: str, attr: str) -> Any:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(cwd)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _scheme_of_function(spec: str, fn: Callable) -> Scheme:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        raise ValueError(f"scheme {spec!r}: cannot read the function's parameters") from None
    needs, knobs = [], []
    for p in params:
        if p.name in FIELDS:
            needs.append(p.name)
        elif p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        elif p.default is inspect.Parameter.empty:
            raise ValueError(f"scheme {spec!r}: parameter {p.name!r} is neither a field "
                             f"({', '.join(FIELDS)}) nor a knob with a default")
        elif isinstance(p.default, bool) or not isinstance(p.default, (int, float, str)):
            raise ValueError(f"scheme {spec!r}: knob {p.name!r} needs a number or text "
                             f"default, got {p.default!r}")
        else:
            knobs.append(Knob(p.name, p.default, f"{spec} knob", type(p.default)))
    if "logp" not in needs:
        raise ValueError(f"scheme {spec!r}: the function must take logp (the target "
                         "token's log-probability)")
    wanted = tuple(needs)

    def weight(f: Mapping[str, torch.Tensor], **kn: Any) -> torch.Tensor:
        return fn(**{n: f[n] for n in wanted}, **kn)

    doc = (inspect.getdoc(fn) or "").strip().splitlines()
    attr = spec.partition(":")[2]
    return Scheme(spec, attr, doc[0] if doc else f"{attr}(...)", f"user-defined ({spec})",
                  weight, tuple(knobs), tuple(n for n in wanted if n != "example"),
                  per_token="example" not in wanted)


def probe_fields(needs: tuple[str, ...] | list[str] = tuple(FIELDS)) -> dict[str, torch.Tensor]:
    """Every q from 1e-6 to 1 (and -inf), with plausible other fields: what a scheme
    is checked on when it is loaded."""
    logp = torch.cat([torch.linspace(math.log(1e-6), 0.0, 61), torch.tensor([-math.inf])])
    out = {"logp": logp,
           "entropy_top20": torch.linspace(0.0, math.log(20), len(logp)),
           "logp_ref": logp.flip(0).clamp(min=-30.0),
           "example": torch.arange(len(logp)) // 8}
    return {k: v for k, v in out.items() if k in needs or k in ALWAYS}


def _probe(scheme: Scheme) -> None:
    try:
        knobs = scheme.resolve_knobs({})
        w = scheme.weight(probe_fields(scheme.needs), **knobs)
    except Exception as e:  # noqa: BLE001 - user code: report, don't crash
        raise ValueError(f"scheme {scheme.name!r}: fails on a probe of q in [1e-6, 1] "
                         f"({type(e).__name__}: {e})") from None
    if not torch.is_tensor(w) or w.shape != (62,):
        raise ValueError(f"scheme {scheme.name!r}: must return a tensor shaped like logp "
                         f"(62,), got {getattr(w, 'shape', type(w).__name__)}")
    w = w.float()
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"scheme {scheme.name!r}: weights must be finite and >= 0 "
                         f"(got min {w.min().item():g}, max {w.max().item():g} on the probe)")
