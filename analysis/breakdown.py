"""Breakdowns of a scored run by a record column (``source``, ``task``, ``category``...):
per group, the q distribution and, per scheme, mean weight, effective tokens, the group's
share of the run's weight and the weight per q band. Which group does a scheme emphasize
relative to its size?

Nothing here has a formula of its own: the weights are computed once over the whole run
(``Targets.weights``, i.e. ``infosft.weights.token_weights``, so ProFit's random draws are
the run's own) and then split by group, and every per-group number is
:meth:`analysis.stats.Targets.summary` or :meth:`~analysis.stats.Targets.q_facts` applied
to that group's tokens, the same functions ``infosft stats`` and the Tune table use for
the whole run. A large run's (binned) grouping splits the run's cells instead
(:mod:`analysis.cells`): each group holds its own count of tokens in each of the run's
cells, so a knob change costs the same at any size.

A record's label is its value in the example's raw record (``examples.parquet``'s
``record`` JSON; top-level keys only): strings as they are, other values as JSON text
(``3``, ``true``), a missing key or null as :data:`NONE`. Groups are ranked by target
tokens; beyond :data:`MAX_GROUPS` the rest are pooled into :data:`OTHER`.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import polars as pl

from infosft.analysis.cells import cells
from infosft.analysis.stats import BINNED_LINE, Targets, summary_targets
from infosft.analysis.store import Run
from infosft.errors import InfosftError
from infosft.schemes import BUILTIN
from infosft.weights import BAND_NAMES, resolve_knobs

NONE = "(none)"
OTHER = "(other)"
#: groups shown, ranked by target tokens; the rest are pooled into ``(other)``
MAX_GROUPS = 20
#: a column is offered for a breakdown (``groupable_columns``) when it has this many
#: distinct values (its ``(none)`` included) and they are strings, integers or booleans
USEFUL_DISTINCT = (2, 50)
#: preferred defaults, in order, when a run has them
DEFAULT_COLUMNS = ("task", "source", "category")
QUANTILES = (0.1, 0.5, 0.9)

#: the scheme-free columns, one row per group
GROUP_SCHEMA = {"group": pl.String, "examples": pl.Int64, "target_tokens": pl.Int64,
                "token_share": pl.Float64, "mean_q": pl.Float64, "q_p10": pl.Float64,
                "q_p50": pl.Float64, "q_p90": pl.Float64}
#: the columns of :func:`breakdown`: one row per group and scheme
SCHEMA = {**GROUP_SCHEMA, "scheme": pl.String, "mean_weight": pl.Float64,
          "share_nonzero": pl.Float64, "effective_tokens": pl.Float64,
          "effective_share": pl.Float64, "weight_share": pl.Float64, "emphasis": pl.Float64,
          **{f"weight_share_{b}": pl.Float64 for b in BAND_NAMES}}


# ------------------------------------------------------------------ record labels

def _records(examples: pl.DataFrame) -> list[dict]:
    """Each example's record as a dict (a record that is not a JSON object: ``{}``)."""
    out = []
    for text in examples["record"].to_list():
        try:
            rec = json.loads(text) if text is not None else None
        except ValueError:
            rec = None
        out.append(rec if isinstance(rec, dict) else {})
    return out


def label(value: Any) -> str:
    """The group name of a record value.

    >>> label("math"), label(3), label(True), label(None), label([1, 2])
    ('math', '3', 'true', '(none)', '[1, 2]')
    """
    if value is None:
        return NONE
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _kind(values: Iterable[Any]) -> str:
    kinds = {"string" if isinstance(v, str) else "bool" if isinstance(v, bool)
             else "int" if isinstance(v, int) else "float" if isinstance(v, float)
             else "other" for v in values if v is not None}
    return kinds.pop() if len(kinds) == 1 else "mixed" if kinds else "null"


def record_columns(examples: pl.DataFrame) -> pl.DataFrame:
    """The top-level keys of a run's records: ``column``, ``kind`` (string, int, bool,
    float, other, mixed or null), ``present`` (records with the key), ``n_distinct``
    (distinct labels, ``(none)`` included) and ``groupable`` (a useful breakdown: strings,
    ints or bools with 2 to 50 distinct labels), in first-seen order.

    >>> ex = pl.DataFrame({"record": ['{"task": "a", "n": 1.5}', '{"task": "b"}']})
    >>> record_columns(ex).select("column", "kind", "n_distinct", "groupable").rows()
    [('task', 'string', 2, True), ('n', 'float', 2, False)]
    """
    records = _records(examples)
    keys = list(dict.fromkeys(k for rec in records for k in rec))
    rows = []
    for key in keys:
        values = [rec.get(key) for rec in records]
        kind = _kind(values)
        distinct = len({label(v) for v in values})
        rows.append({"column": key, "kind": kind, "present": sum(key in r for r in records),
                     "n_distinct": distinct,
                     "groupable": kind in ("string", "int", "bool")
                     and USEFUL_DISTINCT[0] <= distinct <= USEFUL_DISTINCT[1]})
    return pl.DataFrame(rows, schema={"column": pl.String, "kind": pl.String,
                                      "present": pl.Int64, "n_distinct": pl.Int64,
                                      "groupable": pl.Boolean})


def groupable_columns(examples: pl.DataFrame) -> list[str]:
    """The columns worth a breakdown (see :func:`record_columns`), the defaults
    (``task``, ``source``, ``category``) first."""
    cols = record_columns(examples).filter("groupable")["column"].to_list()
    return sorted(cols, key=lambda c: DEFAULT_COLUMNS.index(c) if c in DEFAULT_COLUMNS
                  else len(DEFAULT_COLUMNS))


def _labels(examples: pl.DataFrame, column: str, where: Path | str) -> pl.DataFrame:
    records = _records(examples)
    if not any(column in rec for rec in records):
        have = list(dict.fromkeys(k for rec in records for k in rec))
        raise InfosftError(f"{where}: no record has a column {column!r}; the records' "
                           f"columns are {', '.join(have) if have else '(none)'}")
    return pl.DataFrame({"example_id": examples["example_id"].cast(pl.Int32),
                         "group": [label(rec.get(column)) for rec in records]},
                        schema={"example_id": pl.Int32, "group": pl.String})


def group_labels(run: str | Path | Run, column: str) -> pl.DataFrame:
    """Each example's group under ``column``: ``example_id`` (i32), ``group`` (str), one
    row per example of the run (``(none)`` where the record lacks the key or has null).

    Raises:
        InfosftError: one line naming the run and the column and listing the columns
            the records have, when no record has ``column``.
    """
    run = run if isinstance(run, Run) else Run(run)
    return _labels(run.read_examples(), column, run.path)


# ------------------------------------------------------------------ the grouping

@dataclass
class Grouping:
    """A run's target tokens split into groups: everything that does not depend on the
    scheme, so a knob change costs one weight pass over the run plus a slice per group.

    Attributes:
        column: the record column.
        names: ``(g,)`` group names, by target tokens (descending), ``(other)`` last.
        examples: ``(g,)`` examples per group (those without target tokens too).
        order: ``(n,)`` indices into the run's target tokens, grouped: group ``i``'s tokens
            are ``order[bounds[i]:bounds[i + 1]]`` (of a binned run: into its cells, each
            group holding its own count of tokens in them).
        bounds: ``(g + 1,)`` offsets into ``order``.
        parts: per group, its tokens as :class:`Targets` (band and example boundaries
            precomputed).
        facts: ``(g,)`` rows of the scheme-free columns (:data:`GROUP_SCHEMA`).
        n_groups: distinct labels before pooling into ``(other)``.
        capped: whether some were pooled.
        tables: of a binned run, what builds the same grouping of another of its cell
            tables (:meth:`over`).
    """

    column: str
    names: list[str]
    examples: np.ndarray
    order: np.ndarray
    bounds: np.ndarray
    parts: list[Targets]
    facts: pl.DataFrame
    n_groups: int
    capped: bool
    tables: Callable[[Targets], "Grouping"] | None = field(default=None, repr=False)


    @property
    def note(self) -> str:
        """One sentence on pooling (empty when every group is shown).

        >>> Grouping("task", ["a", "b", OTHER], *[None] * 5, n_groups=9, capped=True).note
        'The 2 groups with the most target tokens; the other 7 pooled as (other).'
        """
        if not self.capped:
            return ""
        kept = len(self.names) - 1
        return (f"The {kept} groups with the most target tokens; the other "
                f"{self.n_groups - kept} pooled as {OTHER}.")

    @classmethod
    def build(cls, targets: Targets, labels: pl.DataFrame, column: str, *,
              max_groups: int = MAX_GROUPS) -> "Grouping":
        """From a run's :class:`Targets` (its tokens) and :func:`group_labels`' frame."""
        ex_group = dict(zip(labels["example_id"].to_list(), labels["group"].to_list()))
        per_example = [ex_group.get(int(e), NONE) for e in targets.ex_ids]  # with targets
        tokens = Counter()
        for name, n in zip(per_example, targets.ex_counts):
            tokens[name] += int(n)
        names, index, examples, n_groups = _rank(tokens, labels, max_groups)
        other = len(index)
        ex_code = np.fromiter((index.get(g, other) for g in per_example), dtype=np.int32,
                              count=len(per_example))
        code = np.repeat(ex_code, targets.ex_counts)
        order = np.argsort(code, kind="stable")
        bounds = np.searchsorted(code[order], np.arange(len(names) + 1)).astype(np.int64)
        parts = [targets.subset(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return cls(column=column, names=names, examples=examples, order=order, bounds=bounds,
                   parts=parts, facts=_facts(names, examples, parts, len(targets)),
                   n_groups=n_groups, capped=n_groups > len(index))

    @classmethod
    def build_binned(cls, run: Run, targets: Targets, labels: pl.DataFrame, column: str,
                     *, examples: pl.DataFrame | None = None,
                     max_groups: int = MAX_GROUPS) -> "Grouping":
        """From a binned :class:`Targets` of ``run`` (:meth:`Targets.binned`) and
        :func:`group_labels`' frame: one pass over the run's parts counts each group's
        tokens per cell (memory bounded by a part and groups x cells). The groups are
        ranked by ``examples``' ``n_target`` (the run's examples table), or without it
        by a pass that counts each example's targets."""
        if examples is not None and "n_target" in examples.columns:
            per_ex = examples.select("example_id", pl.col("n_target").alias("len"))
        else:
            per_ex = run.collect(run.scan_tokens().filter(pl.col("is_target"))
                                 .group_by("example_id").len(), streaming=True)
        n_of = dict(zip(per_ex["example_id"].to_list(), per_ex["len"].to_list()))
        tokens = Counter()
        for e, g in zip(labels["example_id"].to_list(), labels["group"].to_list()):
            tokens[g] += n_of.get(e, 0)
        frame = examples

        def tables(t: Targets) -> Grouping:  # the same groups over another cell table
            return grouping(run, column, targets=t, examples=frame, max_groups=max_groups)
        names, index, examples, n_groups = _rank(tokens, labels, max_groups)
        codes = labels.select("example_id", pl.col("group").replace_strict(
            index, default=len(index), return_dtype=pl.Int32))
        # counts only: a group's cells are weighed at the run's cell means
        by_group = cells(run, targets.grid, codes, means=False)
        rows = np.argsort(targets.cell_key, kind="stable")  # rows need not be in key order
        at = rows[np.searchsorted(targets.cell_key[rows], by_group["key"].to_numpy())]
        bounds = np.searchsorted(by_group["group"].to_numpy(),
                                 np.arange(len(names) + 1)).astype(np.int64)
        count = by_group["count"].to_numpy().astype(np.float64)
        parts = [targets.subset(at[a:b], count=count[a:b])
                 for a, b in zip(bounds[:-1], bounds[1:])]
        return cls(column=column, names=names, examples=examples, order=at, bounds=bounds,
                   parts=parts, facts=_facts(names, examples, parts, len(targets)),
                   n_groups=n_groups, capped=n_groups > len(index), tables=tables)

    def over(self, targets: Targets, scheme: str, knobs: dict[str, Any]
             ) -> tuple["Grouping", Targets]:
        """This grouping and ``targets`` (the run's it was built from), or for a scheme
        weighed on another of a binned run's cell tables (:meth:`Targets.over`) the same
        grouping of that table, and the table."""
        t = targets.over(scheme, knobs)
        return (self, t) if t is targets else (self.tables(t), t)

    def table(self, targets: Targets, schemes: dict[str, dict[str, Any]],
              weights: dict[str, np.ndarray] | None = None) -> pl.DataFrame:
        """One row per group and scheme (:data:`SCHEMA`), groups in :attr:`names` order,
        schemes in the order given.

        Args:
            targets: the run's target tokens (the ones this grouping was built from).
            schemes: scheme -> its knobs.
            weights: scheme -> ``(n,)`` weights of the run's targets already computed
                (e.g. ``analysis.tune.all_weights``); computed here when missing.
        """
        rows = []
        for scheme, knobs in schemes.items():
            g, t = self.over(targets, scheme, knobs)
            w = (weights or {}).get(scheme)
            w = t.weights(scheme, **knobs) if w is None else w
            total = t.mass(w)
            grouped = w[g.order]  # one gather; each group's weights are then a view
            for i, part in enumerate(g.parts):
                wg = grouped[g.bounds[i]:g.bounds[i + 1]]
                s = part.summary(scheme, w=wg, **knobs)
                share = part.mass(wg) / total if total > 0 else 0.0
                tok = self.facts["token_share"][i]
                rows.append({**self.facts.row(i, named=True), "scheme": scheme,
                             **{k: s[k] for k in ("mean_weight", "share_nonzero",
                                                  "effective_tokens", "effective_share")},
                             "weight_share": share,
                             "emphasis": share / tok if tok else np.nan,
                             **{f"weight_share_{b}": s[f"weight_share_{b}"]
                                for b in BAND_NAMES}})
        return pl.DataFrame(rows, schema=SCHEMA)


def _rank(tokens: Counter, labels: pl.DataFrame, max_groups: int
          ) -> tuple[list[str], dict[str, int], np.ndarray, int]:
    """Groups ranked by target tokens (``tokens``: label -> count): the names shown
    (``(other)`` last when pooled), each kept label's index (the rest pool into index
    ``len(index)``), examples per name, and how many distinct labels there are."""
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}")
    ex_counts = Counter(labels["group"].to_list())
    for name in ex_counts:
        tokens.setdefault(name, 0)
    ranked = sorted(tokens, key=lambda g: (-tokens[g], g))
    kept = ranked[:max_groups]
    names = kept + ([OTHER] if len(ranked) > len(kept) else [])
    index = {g: i for i, g in enumerate(kept)}
    examples = np.zeros(len(names), dtype=np.int64)
    for g, n in ex_counts.items():
        examples[index.get(g, len(kept))] += n
    return names, index, examples, len(ranked)


def _facts(names: list[str], examples: np.ndarray, parts: list[Targets],
           total: int) -> pl.DataFrame:
    """The scheme-free columns (:data:`GROUP_SCHEMA`), one row per group."""
    rows = []
    for name, n_ex, part in zip(names, examples, parts):
        n = len(part)
        quant = ([math.exp(part.quantile(p)) for p in QUANTILES] if n
                 else [np.nan] * len(QUANTILES))
        rows.append({"group": name, "examples": int(n_ex), "target_tokens": n,
                     "token_share": n / total if total else np.nan,
                     "mean_q": part.q_facts()["mean_q"] if n else np.nan,
                     **{f"q_p{round(p * 100)}": float(v) for p, v in zip(QUANTILES, quant)}})
    return pl.DataFrame(rows, schema=GROUP_SCHEMA)


# Groupings and column lists per (run, meta.json mtime, ...): the app asks again on every
# knob move, and the records are parsed only when the run or the column changes.
_cache: dict[tuple, Any] = {}
_cache_lock = threading.Lock()
_building: dict[tuple, threading.Lock] = {}
_CACHE_SIZE = 8


def _cached(key: tuple, make):
    """``make()``'s value for ``key``, made once however many threads ask at the same
    time: a slider moved while a large run's grouping is being built (15 s at 100M target
    tokens) starts a new script run beside the old one, and each used to build its own."""
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        building = _building.setdefault(key, threading.Lock())
    with building:  # the others wait for the first, then find its value
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        value = make()
        with _cache_lock:
            while len(_cache) >= _CACHE_SIZE:
                _cache.pop(next(iter(_cache)))
            _cache[key] = value
            _building.pop(key, None)
    return value


def _run_key(run: Run) -> tuple:
    return str(run.path.resolve()), run.meta_path.stat().st_mtime_ns


def run_columns(run: str | Path | Run, *, examples: pl.DataFrame | None = None) -> list[str]:
    """:func:`groupable_columns` of a complete run, cached per run path and ``meta.json``
    mtime (the app asks on every rerun). ``examples``: the run's, when already loaded."""
    run = run if isinstance(run, Run) else Run(run)
    run.require_complete()
    return list(_cached(("columns", *_run_key(run)), lambda: groupable_columns(
        run.read_examples() if examples is None else examples)))


def grouping(run: str | Path | Run, column: str, *, targets: Targets | None = None,
             examples: pl.DataFrame | None = None,
             max_groups: int = MAX_GROUPS) -> Grouping:
    """The run's :class:`Grouping` by ``column``, cached per run path, ``meta.json``
    mtime, column and cap. ``targets`` / ``examples``: the run's, when already loaded."""
    run = run if isinstance(run, Run) else Run(run)
    run.require_complete()

    def make() -> Grouping:
        ex = run.read_examples() if examples is None else examples
        labels = _labels(ex, column, run.path)
        t = Targets.from_run(run) if targets is None else targets
        if t.is_binned:
            return Grouping.build_binned(run, t, labels, column, examples=ex,
                                         max_groups=max_groups)
        return Grouping.build(t, labels, column, max_groups=max_groups)

    grid = targets.grid if targets is not None and targets.is_binned else None
    return _cached(("grouping", *_run_key(run), column, max_groups, grid), make)


def breakdown(run: str | Path | Run, column: str, scheme: str | None = None, *,
              targets: Targets | None = None, examples: pl.DataFrame | None = None,
              weights: dict[str, np.ndarray] | None = None, max_groups: int = MAX_GROUPS,
              **knobs: Any) -> pl.DataFrame:
    """A run broken down by a record column, under one scheme or (``scheme=None``) every
    built-in scheme the run supports (:meth:`Targets.schemes`).

    Args:
        run: a complete scored run.
        column: a top-level key of the records (``task``, ``source``...).
        scheme: a registered name or ``module:function``; None for every scheme the run
            supports.
        **knobs: as for ``infosft.weights.resolve_knobs``; knobs of another scheme are
            ignored, so one set serves all (``C=2.0, threshold=0.2, alpha=0.5``).
        targets, examples, weights: the run's, when already loaded or computed.
        max_groups: groups kept (by target tokens); the rest are pooled into ``(other)``.

    Returns:
        ``(g * s, len(SCHEMA))``: one row per group and scheme, groups by target tokens
        (``(other)`` last), then schemes in :data:`infosft.schemes.BUILTIN` order:
        ``group``, ``examples``, ``target_tokens``, ``token_share`` (of the run's targets),
        ``mean_q``, ``q_p10`` / ``q_p50`` / ``q_p90`` (quantiles of q), ``scheme``,
        ``mean_weight``, ``share_nonzero`` (w > 0), ``effective_tokens``
        ((sum w)^2 / sum w^2 within the group) and ``effective_share`` (of the group's
        targets), ``weight_share`` (of the run's total weight under the scheme; sums to
        1), ``emphasis`` (weight_share / token_share: above 1, the scheme leans on the
        group more than its size), ``weight_share_low`` / ``_medium`` / ``_high`` (the
        group's weight per q band).

    Raises:
        InfosftError: the column is in no record (the message lists those that are), or
            the run lacks a field ``scheme`` needs (the message says what to do).
    """
    given = {k: v for k, v in knobs.items() if v is not None}
    for s in (BUILTIN if scheme is None else (scheme,)):
        resolve_knobs(s, **given)  # a bad knob fails before any data is read
    run = run if isinstance(run, Run) else Run(run)
    targets = Targets.from_run(run) if targets is None else targets
    if scheme is not None:
        targets.require(scheme)
    schemes = targets.schemes() if scheme is None else [scheme]
    resolved = {s: given for s in schemes}
    g = grouping(run, column, targets=targets, examples=examples, max_groups=max_groups)
    return g.table(targets, resolved, weights)


# ------------------------------------------------------------------ text and display

def breakdown_report(run: str | Path, column: str, scheme: str, *,
                     max_groups: int = MAX_GROUPS, binned: bool | None = None,
                     **knobs: Any) -> dict[str, Any]:
    """What ``infosft stats RUN --by COLUMN`` prints, as a dict: ``run``, ``column``,
    ``scheme`` (the chosen one), ``knobs`` (per scheme, resolved), ``groups``
    (distinct labels), ``shown`` (rows per scheme), ``capped``, ``binned`` (see
    :func:`analysis.stats.summary_targets`) and ``rows`` (every scheme's
    :func:`breakdown` rows as dicts)."""
    r = Run(run)
    r.require_complete()
    given = {k: v for k, v in knobs.items() if v is not None}
    resolve_knobs(scheme, **given)
    targets = summary_targets(r, scheme, given, binned)
    schemes = targets.schemes(extra=(scheme,), knobs=lambda s: given)
    g = grouping(r, column, targets=targets, max_groups=max_groups)
    table = g.table(targets, {s: given for s in schemes})
    return {"run": str(r.path), "column": column, "scheme": scheme,
            "binned": targets.is_binned,
            "knobs": {s: resolve_knobs(s, **given) for s in schemes},
            "groups": g.n_groups, "shown": len(g.names), "capped": g.capped,
            "max_groups": max_groups, "rows": table.to_dicts()}


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    width = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
             for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, width)))
    return [fmt(header), *(fmt(r) for r in rows)]


def _pct(x: float) -> str:
    return "-" if x is None or x != x else f"{x:.1%}"


def format_breakdown(rep: dict[str, Any]) -> str:
    """A text of :func:`breakdown_report`: the chosen scheme's table, then each scheme's
    share of the weight per group next to the group's share of the target tokens."""
    rows = pl.DataFrame(rep["rows"], schema=SCHEMA)
    chosen = rows.filter(pl.col("scheme") == rep["scheme"])
    knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in rep["knobs"][rep["scheme"]].items())
    capped = (f"; the top {rep['max_groups']} by target tokens, the other "
              f"{rep['groups'] - rep['max_groups']} pooled as {OTHER}" if rep["capped"] else "")
    lines = [f"run        {rep['run']}",
             f"by         {rep['column']}: {rep['groups']} groups{capped}",
             f"scheme     {rep['scheme']}" + (f" ({knobs})" if knobs else ""),
             *([BINNED_LINE] if rep.get("binned") else []), ""]

    def num(x, spec):
        return "-" if x is None or x != x else format(x, spec)

    lines += _grid(
        ["group", "examples", "targets", "tokens", "mean q", "q p10", "p50", "p90",
         "mean w", "w > 0", "eff. tokens", "w share", "emphasis", "low q", "medium", "high q"],
        [[r["group"], str(r["examples"]), str(r["target_tokens"]), _pct(r["token_share"]),
          num(r["mean_q"], ".3f"), num(r["q_p10"], ".3f"), num(r["q_p50"], ".3f"),
          num(r["q_p90"], ".3f"), num(r["mean_weight"], ".3f"), _pct(r["share_nonzero"]),
          num(r["effective_tokens"], ".0f"), _pct(r["weight_share"]),
          num(r["emphasis"], ".2f"), _pct(r["weight_share_low"]),
          _pct(r["weight_share_medium"]), _pct(r["weight_share_high"])]
         for r in chosen.iter_rows(named=True)])
    lines += ["", "share of each scheme's total weight per group (tokens: the share of "
              "target tokens; emphasis = weight / tokens)"]
    wide = rows.pivot(on="scheme", index="group", values="weight_share",
                      maintain_order=True)
    tokens = chosen.select("group", "token_share")
    lines += _grid(["group", "tokens", *wide.columns[1:]],
                   [[g, _pct(t), *(_pct(x) for x in wide.row(i)[1:])]
                    for i, (g, t) in enumerate(tokens.iter_rows())])
    return "\n".join(lines)


def display_table(table: pl.DataFrame, scheme: str | None = None,
                  labels: dict[str, str] | None = None) -> pl.DataFrame:
    """:func:`breakdown`'s rows as the app shows them: with ``scheme``, that scheme's row
    per group (percentages as percentages); without, one row per group with each
    scheme's share of the weight (``labels``: the schemes' legend names)."""
    labels = labels or {}
    base = [pl.col("group").alias("Group"), pl.col("examples").alias("Examples"),
            pl.col("target_tokens").alias("Target tokens"),
            pl.col("token_share").mul(100).round(1).alias("Tokens (%)"),
            *(pl.col(c).round(3).alias(n) for c, n in (
                ("mean_q", "Mean q"), ("q_p10", "q p10"), ("q_p50", "q p50"),
                ("q_p90", "q p90")))]
    if scheme is not None:
        part = table.filter(pl.col("scheme") == scheme)
        return part.select(
            *base, pl.col("mean_weight").round(4).alias("Mean weight"),
            pl.col("effective_tokens").round(0).cast(pl.Int64).alias("Effective tokens"),
            pl.col("weight_share").mul(100).round(1).alias("Weight (%)"),
            pl.col("emphasis").round(2).alias("Emphasis"),
            *(pl.col(f"weight_share_{b}").mul(100).round(1).alias(f"{b} q (%)")
              for b in BAND_NAMES))
    first = table["scheme"][0] if table.height else None
    facts = table.filter(pl.col("scheme") == first).select(*base)
    wide = table.pivot(on="scheme", index="group", values="weight_share",
                       maintain_order=True)
    return facts.with_columns(
        (wide[s] * 100).round(1).alias(f"Weight {labels.get(s, s)} (%)")
        for s in wide.columns[1:])
