"""Session state shared by the pages: the active run, the knobs, the selected example,
and the per-run caches (loaded once per run, keyed by path + meta.json mtime)."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable

import polars as pl
import streamlit as st

from infosft.analysis.example_bins import EX_BINS, EXD_BINS, EXH_BINS, ExampleBins
from infosft.analysis.stats import EXACT_UP_TO, Targets, missing_reason
from infosft.analysis.store import Run
from infosft.analysis.tune import Settings, auto_c
from infosft.app.workspace import SAMPLE_RUN
from infosft.errors import InfosftError

#: Errors a page turns into a one-line ``st.error`` instead of a traceback.
USER_ERRORS = (InfosftError, ValueError, OSError, pl.exceptions.PolarsError)
_LOG = logging.getLogger("infosft.app")


def init() -> None:
    """Defaults for a new session: the bundled sample run, default knobs."""
    ss = st.session_state
    ss.setdefault("run_path", str(SAMPLE_RUN))
    ss.setdefault("settings", Settings())
    ss.setdefault("example_id", None)


def settings() -> Settings:
    init()
    return st.session_state["settings"]


def active_run() -> Run:
    """The active run; raises :class:`InfosftError` if it vanished or is incomplete."""
    init()
    run = Run(st.session_state["run_path"])
    if not run.path.is_dir():
        raise InfosftError(f"the run directory {run.path} no longer exists; choose another "
                           "run on the Data & scoring page")
    run.require_complete()
    return run


def set_active_run(path: str | Path) -> None:
    st.session_state["run_path"] = str(path)
    st.session_state["example_id"] = None


def _key(run: Run) -> tuple[str, float]:
    return str(run.path.resolve()), run.meta_path.stat().st_mtime


#: Above this many target tokens the pages work on histograms, never on every token:
#: Overview and Tune on the run's cells (:meth:`analysis.stats.Targets.binned`), the
#: per-example pages (Examples, Token view, Export's filter) on each example's
#: (:class:`analysis.example_bins.ExampleBins`): a knob change then costs the same at any
#: size and memory stays flat. Below, the tokens themselves (exact). At 250k the tokens
#: cost ~27 ms a knob move, what the histogram costs at any size
#: (benchmarks/bench_binned.py: 86 ms at 1M, 0.9 s at 10M).
BINNED_ABOVE = int(os.environ.get("INFOSFT_BINNED_ABOVE", 250_000))
#: Up to this many target tokens a page loads the tokens after all for a scheme its
#: histograms cannot weigh (a user's scheme of several fields per example, or one that
#: reads ``example``); above, it says what it lacks.
TOKENS_UP_TO = int(os.environ.get("INFOSFT_TOKENS_UP_TO", EXACT_UP_TO))
#: The most examples a page lists at once (the Examples table, an example picker): a
#: 400k-row table or selectbox is sent whole on every rerun (seconds at 100M target
#: tokens); past it the table shows its first rows and the Token view takes an id.
ROWS_UP_TO = 5000
BINNED_NOTE = ("This run is large, so Overview and Tune work on histograms of its target "
               "tokens (cells of logit q and the fields each scheme reads; for excess "
               "within each example, each token's rank share there): a knob change costs "
               "the same at any size; mean weight, share with w > 0 and effective tokens "
               "come within 1% of the exact ones (`infosft stats --exact` uses every token).")
EXAMPLES_BINNED = ("This run is large, so the weight columns come from a histogram of each "
                   f"example's target tokens ({EX_BINS} bins in logit q; for EAFT, "
                   f"{EXH_BINS} in H_top20; for excess, {EXD_BINS} in logp_ref - logp), "
                   "not the tokens: "
                   "each example's mean w is within ±{mean:.3f} of the exact one, its share "
                   "w = 0 within ±{zero:.1%} (`infosft stats --exact` and the export use the tokens).")
EXAMPLES_EXACT = ("This run is large, so the weight columns come from a histogram of each "
                  "example's target tokens; these are exact all the same (ProFit random: "
                  "the run's own draws, regenerated; excess within each example: "
                  "ceil(keep x m) of the example's m tokens).")
EXAMPLES_NEED_TOKENS = ("{why}, so the weight columns are empty for a run this large (this "
                        "page does not load every token); `infosft export RUN --where "
                        "'weight_mass<...'` computes them from the tokens.")


@st.cache_resource(max_entries=4, show_spinner="Loading the run's target tokens...")
def _targets(path: str, mtime: float) -> Targets:
    t = Targets.from_run(path)
    for log_x in (False, True):  # bin indices once per run, so slider moves only bincount
        t.histogram(bins=50, log_x=log_x)
    return t


@st.cache_resource(max_entries=4, show_spinner="Binning the run's target tokens...")
def _binned(path: str, mtime: float) -> Targets:
    t = Targets.binned(path)
    for log_x in (False, True):
        t.histogram(bins=50, log_x=log_x)
    return t


@st.cache_resource(max_entries=4, show_spinner="Binning each example's target tokens...")
def _example_bins(path: str, mtime: float) -> ExampleBins:
    return ExampleBins.from_run(path)


def _n_targets(path: str) -> int:
    try:
        n = Run(path).meta()["counts"]["target_tokens"]
    except (InfosftError, KeyError, TypeError):
        n = 0
    return n if isinstance(n, int) else 0


def _summary_targets(path: str, mtime: float) -> Targets:
    return _binned(path, mtime) if _n_targets(path) > BINNED_ABOVE else _targets(path, mtime)


@st.cache_resource(max_entries=4)
def _examples(path: str, mtime: float) -> pl.DataFrame:
    return Run(path).read_examples()


@st.cache_resource(max_entries=4)
def _vocab(path: str, mtime: float) -> pl.DataFrame:
    return Run(path).read_vocab()


@st.cache_resource(max_entries=4)
def _auto_c(path: str, mtime: float, binned: bool) -> dict[str, Any]:
    # ``binned`` in the key: the tokens' median and the cells' differ in the 4th digit,
    # and a process that changed BINNED_ABOVE (a test) must not get the other one
    return auto_c(_binned(path, mtime) if binned else _targets(path, mtime))


def targets(run: Run) -> Targets:
    """What Overview and Tune summarize: the run's target tokens, or their histogram for
    a run of more than :data:`BINNED_ABOVE` target tokens (``is_binned``; excess ranked
    within each example on its rank cells), unless the chosen scheme needs the tokens
    and the run has at most :data:`TOKENS_UP_TO`."""
    key = _key(run)
    t = _summary_targets(*key)
    s = settings()
    if t.is_binned and _needs_tokens(key[0], t.missing(s.scheme, knobs=s.knobs()),
                                     t.run_fields):
        return _targets(*key)
    todo = [x for x in t.schemes(extra=(s.scheme,), knobs=s.knobs)
            if t.is_binned and t.pending(x, s.knobs(x))]
    if todo:  # built here, where a spinner shows, rather than inside a chart
        with st.spinner("Binning the run's tokens by the fields these schemes read "
                        "(once per run)..."):
            for x in todo:
                t.over(x, s.knobs(x))
    return t


def _needs_tokens(path: str, why: str | None, fields: tuple[str, ...]) -> bool:
    """Whether a page should load the tokens after all: its histogram cannot weigh the
    chosen scheme (``why``), the tokens can, and the run has at most TOKENS_UP_TO."""
    s = settings()
    return (why is not None and _n_targets(path) <= TOKENS_UP_TO
            and missing_reason(s.scheme, fields, knobs=s.knobs()) is None)


def token_targets(run: Run) -> Targets:
    """The run's target tokens themselves (every token in memory: a small run's
    per-example pages; a large run's use :func:`example_targets`)."""
    return _targets(*_key(run))


def example_targets(run: Run) -> Targets | ExampleBins:
    """What the per-example pages (Examples, Token view, Export's filter) work on: the
    run's target tokens, or for a run of more than :data:`BINNED_ABOVE` coarse histograms
    per example (:class:`analysis.example_bins.ExampleBins`), whose memory does not grow
    with the tokens, unless the chosen scheme needs the tokens and the run has at most
    :data:`TOKENS_UP_TO`."""
    key = _key(run)
    if _n_targets(key[0]) <= BINNED_ABOVE:
        return _targets(*key)
    bins = _example_bins(*key)
    if _needs_tokens(key[0], bins.missing(settings().scheme), bins.run_fields):
        return _targets(*key)
    return bins


def examples(run: Run) -> pl.DataFrame:
    return _examples(*_key(run))


def vocab(run: Run) -> pl.DataFrame:
    return _vocab(*_key(run))


def suggested_c(run: Run) -> dict[str, Any]:
    key = _key(run)
    return _auto_c(*key, _n_targets(key[0]) > BINNED_ABOVE)


@st.cache_resource(max_entries=8)
def _token_fields(path: str, mtime: float) -> tuple[str, ...]:
    return Run(path).token_fields()


def scheme_missing(run: Run, t: Targets | None = None) -> Callable[[str], str | None]:
    """Why the active run cannot be weighted by a scheme (one short line, e.g. "EAFT
    needs entropy_top20: rescore the run"; None when it can): of ``t`` when given (a
    binned run's, with the session's knobs), else of the run's tokens (what Export and
    the token view read)."""
    if t is not None:
        return lambda scheme: t.missing(scheme, short=True, knobs=settings().knobs(scheme))
    fields = _token_fields(*_key(run))
    return lambda scheme: missing_reason(scheme, fields, short=True)


def guard(body: Callable[[], None]) -> None:
    """Run a page body; user errors become one ``st.error`` line, never a traceback.
    Anything else (a file no reader validated, a bug) is one line too, with the
    traceback in the server's log. (``st.rerun`` / ``st.stop`` are BaseExceptions and
    pass.)"""
    try:
        body()
    except USER_ERRORS as e:
        st.error(error_line(e))
    except Exception as e:  # noqa: BLE001 - the page must stay usable
        _LOG.exception("page error")
        first = (str(e).strip().splitlines() or [""])[0]
        st.error(f"unexpected error: {type(e).__name__}: {first} (details in the app's log)")


def fragment(run_every: float | None = None):
    """``st.fragment`` with a guarded body: a fragment reruns on its own, outside the
    page's :func:`guard`, so it needs its own."""
    def wrap(fn: Callable[..., None]):
        @functools.wraps(fn)
        def body(*args, **kwargs) -> None:
            guard(lambda: fn(*args, **kwargs))
        return st.fragment(body, run_every=run_every)
    return wrap


def error_line(e: BaseException) -> str:
    """One readable line for a user error (file name and reason for OS errors)."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename or ''}: {e.strerror}".lstrip(": ")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return first if isinstance(e, (InfosftError, ValueError)) else f"{type(e).__name__}: {first}"
