"""The token view of one example: every token with q, logp, rank, entropy, its top-k
alternatives as text pieces with probabilities, and its weight under every scheme.

Only the one example's rows are read (a filtered Parquet scan); the weights come
from the run's target array so that ProFit's seeded random drop matches the
statistics and the export exactly. For a large run (:class:`ExampleBins` instead of the
run's targets) nothing but the example is read: schemes per token come from its own
tokens (exact), ProFit random from the run's draws regenerated up to the example
(exact, :func:`random_draws`), excess over the run against the run's cut from its excess
histogram (exact but for the tokens within 0.01 nats of the cut, which show the share
kept), and any other selection over a set within the example (:func:`ranked_here`).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from infosft.analysis.example_bins import ExampleBins, random_draws
from infosft.analysis.stats import Targets
from infosft.analysis.store import Run
from infosft.analysis.tune import Settings, run_schemes
from infosft.errors import InfosftError
from infosft.schemes import get as get_scheme
from infosft.weights import resolve_knobs


def example_tokens(run: Run, example_id: int) -> pl.DataFrame:
    """All token rows of one example, sorted by position."""
    df = run.collect(run.scan_tokens().filter(pl.col("example_id") == example_id)
                     .sort("position"))
    if not df.height:
        raise InfosftError(f"{run.path}: no example {example_id}")
    return df


def with_alternatives(tokens: pl.DataFrame, vocab: pl.DataFrame) -> pl.DataFrame:
    """Adds ``top_pieces`` (list[str]) and ``top_probs`` (list[f64]) from ``top_ids`` /
    ``top_logps`` and the run's vocab (token_id -> piece)."""
    alt = (tokens.select("position", "top_ids", "top_logps")
           .explode("top_ids", "top_logps")
           .join(vocab.rename({"token": "piece"}), left_on="top_ids", right_on="token_id",
                 how="left", maintain_order="left")
           .group_by("position", maintain_order=True)
           .agg(pl.col("piece").alias("top_pieces"),
                pl.col("top_logps").exp().cast(pl.Float64).alias("top_probs")))
    return tokens.join(alt, on="position", how="left", maintain_order="left")


def example_slice(targets: Targets, example_id: int) -> slice:
    """Where one example's target tokens sit in the run's target arrays."""
    i = np.searchsorted(targets.ex_ids, example_id)
    if i >= len(targets.ex_ids) or targets.ex_ids[i] != example_id:
        return slice(0, 0)
    start = int(targets.ex_starts[i])
    return slice(start, start + int(targets.ex_counts[i]))


def example_weights(targets: Targets, example_id: int, settings: Settings) -> dict[str, np.ndarray]:
    """Weights of one example's target tokens under every scheme the run supports
    (:func:`analysis.tune.run_schemes`, in position order)."""
    sl = example_slice(targets, example_id)
    out = {}
    for scheme in run_schemes(targets, settings):
        knobs = settings.knobs(scheme)
        if ((scheme == "profit" and settings.direction == "random")
                or not get_scheme(scheme).per_token):
            # The seeded drop depends on the token's place in the whole run, and a
            # selection over a set (excess: the top share of the run) on the whole set.
            out[scheme] = targets.weights(scheme, **knobs)[sl]
        else:
            out[scheme] = targets.subset(sl).weights(scheme, **knobs)
    return out


def ranked_here(schemes: list[str] | tuple[str, ...], settings: Settings,
                bins: ExampleBins | None = None) -> list[str]:
    """Of ``schemes``, those a large run's token view weights within the example rather
    than over the run: a selection over a set (a user's), but not excess, which is
    exact within each example (per=example) and has the run's cut (per=all) from
    ``bins``' excess histogram."""
    return [s for s in schemes if not get_scheme(s).per_token
            and settings.knobs(s).get("per") != "example"
            and not (bins is not None and _over_run(bins, s, settings))]


def _over_run(bins: ExampleBins, scheme: str, settings: Settings) -> bool:
    """Whether ``bins`` weigh ``scheme``'s tokens against the run's cut (excess, per=all)."""
    return scheme == "excess" and bins.d is not None and settings.knobs(scheme)["per"] == "all"


def local_weights(tokens: pl.DataFrame, bins: ExampleBins, example_id: int,
                  settings: Settings) -> dict[str, np.ndarray]:
    """:func:`example_weights` for a large run, from the example's own token rows: every
    scheme its fields allow (the chosen user scheme too); ProFit random from the run's
    draws at the example's place; excess over the run against the run's cut
    (:meth:`ExampleBins.excess_weights`); another set selection (:func:`ranked_here`)
    within it."""
    tgt = tokens.filter(pl.col("is_target")).sort("position")
    local = Targets.from_frame(tgt)
    out = {}
    for scheme in run_schemes(local, settings):
        knobs = settings.knobs(scheme)
        if scheme == "profit" and settings.direction == "random":
            k = resolve_knobs(scheme, **knobs)
            start = bins.offset(example_id)
            d = random_draws(int(k["seed"]), start, start + local.logp.shape[0])
            w = (~(d < np.float32(k["threshold"]))).astype(np.float32)
            out[scheme] = np.where(np.isnan(local.logp), np.float32(0), w)
        elif _over_run(bins, scheme, settings):
            out[scheme] = bins.excess_weights(local.fields["logp_ref"] - local.logp, scheme,
                                              **knobs)
        else:
            out[scheme] = local.weights(scheme, **knobs)
    return out


def nearest_id(ids: np.ndarray, wanted: int) -> int:
    """``wanted`` if it is among the sorted ``ids``, else the next one (the last if none).

    >>> nearest_id(np.array([0, 1, 5, 6]), 5), nearest_id(np.array([0, 1, 5, 6]), 2)
    (5, 5)
    >>> nearest_id(np.array([0, 1, 5, 6]), 9)
    6
    """
    return int(ids[min(int(np.searchsorted(ids, wanted)), len(ids) - 1)])


def token_view(run: Run, example_id: int, targets: Targets | ExampleBins, vocab: pl.DataFrame,
               settings: Settings) -> pl.DataFrame:
    """One example's tokens: ``position``, ``token``, ``is_target``, ``q``, ``logp``,
    ``rank``, ``entropy``, ``top_pieces``, ``top_probs`` and ``w_<scheme>`` for every
    scheme the run supports (null on prompt tokens), in display order. ``targets``: the
    run's targets, or a large run's :class:`ExampleBins` (see the module)."""
    tokens = with_alternatives(example_tokens(run, example_id), vocab)
    ws = (local_weights(tokens, targets, example_id, settings)
          if isinstance(targets, ExampleBins) else example_weights(targets, example_id, settings))
    is_t = tokens["is_target"].to_numpy()
    if any(int(is_t.sum()) != len(w) for w in ws.values()):
        raise InfosftError(f"{run.path}: example {example_id}'s targets do not match the "
                           "run's statistics; reload the run")
    cols = []
    for scheme, w in ws.items():
        full = np.full(tokens.height, np.nan)
        full[is_t] = w
        cols.append(pl.Series(f"w_{scheme}", full).fill_nan(None))
    return (tokens.with_columns(pl.col("logp").exp().cast(pl.Float64).alias("q"), *cols)
            .select("position", "token", "token_id", "is_target", "q", "logp", "rank",
                    "entropy", "top_pieces", "top_probs", *[f"w_{s}" for s in ws]))
