"""Export: the weighted dataset into the workspace, with a download and the two lines
that load it. The knobs are the session's one set (``state.settings()``), the same the
Tune page moves and the sidebar shows: opened from the sidebar or from Tune's button,
Export shows and exports what was last chosen, and a change here is a change there.

The filter box curates: the same expressions as ``infosft export --where`` (over the
examples table's columns and, under the knobs in force, ``weight_mass`` and
``zero_weight_share``), counted live before anything is written; the export keeps the
matching examples, or drops them, and its metadata records the filter."""

from pathlib import Path

import polars as pl
import streamlit as st

from infosft.analysis.export import (SCHEME_FIELDS, WHERE_HELP, example_fields,
                                     export_weighted, filter_fields, match_examples,
                                     parse_where, read_export_meta)
from infosft.app import knobs, state, workspace
from infosft.app.render import export_name, knobs_text
from infosft.errors import InfosftError

DOWNLOAD_LIMIT = 500 * 1024**2
OVERWRITE = "Overwrite an existing file"
MODES = {"keep": "Export only the matching examples",
         "drop": "Drop the matching examples, export the rest"}


def default_name(run_name: str, filtered: bool = False) -> None:
    """Keep the file name box on the default name of the knobs in force (the run, the
    scheme and its knobs; ``-subset`` under a filter, so a curated export does not
    replace the whole one) until the user types a name of their own."""
    ss, s = st.session_state, state.settings()
    default = export_name(run_name, s.scheme, s.knobs(s.scheme)) + ("-subset" if filtered
                                                                     else "")
    if ss.get("export_name") in (None, "", ss.get("_export_default")):
        ss["export_name"] = default
    ss["_export_default"] = default


def body() -> None:
    st.title("Export")
    run = state.active_run()
    ss = st.session_state
    left, right = st.columns([1, 2])
    missing = state.scheme_missing(run)
    with left:
        knobs.knob_widgets("settings", "export", missing=missing)
    s = state.settings()
    with right:
        st.subheader(knobs_text(s.scheme, s.knobs()))
        fmt = st.radio("Format", (".parquet", ".jsonl"), horizontal=True, key="export_fmt")
        where, drop, usable = filter_box(run, s) if not missing(s.scheme) else (None, False,
                                                                                 False)
        default_name(run.path.name, bool(where))
        name = st.text_input("File name (in the workspace's exports/)", key="export_name")
        overwrite = st.checkbox(OVERWRITE, key="export_overwrite")
        if st.button("Export", type="primary", key="export_go", disabled=not usable):
            out = workspace.inside(workspace.subdir(workspace.EXPORTS), name.removesuffix(fmt) + fmt,
                                   "file name")
            exists = (f"{out.name} already exists in {out.parent}; tick “{OVERWRITE}” to "
                      "replace it, or choose another file name")
            if out.exists() and not overwrite:
                st.error(exists)
                return
            try:
                with st.spinner("Writing the weighted dataset..."):
                    ss["export_last"] = str(export_weighted(
                        run.path, out, s.scheme, overwrite=overwrite, where=where, drop=drop,
                        **s.knobs()))
            except InfosftError:
                if out.exists() and not overwrite:  # written meanwhile (another session)
                    st.error(exists)
                    return
                raise
        last = ss.get("export_last")
        if last:
            show_result(last)


def filter_box(run, s) -> tuple[list[str] | None, bool, bool]:
    """The curation filter: (``where`` for export_weighted or None, ``drop``, whether an
    export can go ahead). Shows the live count, or the filter's error as one line."""
    expr = st.text_input(
        "Filter examples (optional)", key="export_where",
        placeholder="e.g. weight_mass<=0.05 and truncated==false",
        help=f"{WHERE_HELP}. Fields: the examples table's numeric and true/false columns "
             "(n_target, mean_q, min_q, mean_logp, min_logp, mean_entropy, top1_share, "
             "truncated, ...) and, under the knobs above, weight_mass (the example's mean "
             "weight) and zero_weight_share; a wrong field lists them all.").strip()
    if not expr:  # no filter: the page reads nothing more than before
        return None, False, True
    ex = state.examples(run)
    fields = filter_fields(ex)
    mode = st.radio("Matching examples", tuple(MODES), format_func=MODES.get,
                    horizontal=True, key="export_where_mode")
    try:
        conds = parse_where(expr, fields)  # a typo costs no weight pass
        t, bound = state.example_targets(run), None
        if not any(c.field in SCHEME_FIELDS for c in conds):  # no weights needed
            table = ex.with_columns(*[pl.lit(None, pl.Float64).alias(f) for f in SCHEME_FIELDS])
        elif getattr(t, "is_binned", False):
            table, bound = binned_fields(t, ex, s)
            if table is None:
                st.info(WHERE_NEEDS_TOKENS.format(why=t.missing(s.scheme, short=True)))
                return [expr], mode == "drop", True
        else:
            table = example_fields(ex, t, s.scheme, **s.knobs())
        n = int(match_examples(table, [expr]).sum())
    except InfosftError as e:
        st.error(str(e))
        return None, False, False
    kept = ex.height - n if mode == "drop" else n
    st.markdown(f"**{n} of {ex.height} examples match**; the export "
                f"{'drops them and ' if mode == 'drop' else ''}writes {kept}.")
    if bound is not None:
        st.caption(WHERE_BINNED.format(bound))
    if not kept:
        st.warning("Nothing to export under this filter.")
    return [expr], mode == "drop", kept > 0


WHERE_BINNED = ("This run is large, so the count uses each example's weight_mass and "
                "zero_weight_share from a histogram of its tokens (within ±{:.3f} of the "
                "exact ones): an example that close to the cut may fall on the other side. "
                "The export itself filters on the exact weights and records what matched.")
WHERE_NEEDS_TOKENS = ("{why}: the live count of a filter on weight_mass or zero_weight_share "
                      "is off for a run this large (it would load every token). The export "
                      "still filters exactly, as `infosft export RUN --where ...` does.")


def binned_fields(bins, ex: pl.DataFrame, s) -> tuple[pl.DataFrame | None, float | None]:
    """:func:`example_fields` of a large run from its per-example histograms, and the
    widest bound of its two fields ((None, None) when the scheme needs the tokens)."""
    per = bins.per_example(s.scheme, **s.knobs())
    if per is None:
        return None, None
    table = ex.join(per.select("example_id", pl.col("mean_weight").alias("weight_mass"),
                               "zero_weight_share"), on="example_id", how="left",
                    maintain_order="left")
    bound = bins.bound(s.scheme, **s.knobs())
    return table, max(bound.values()) if bound else 0.0


def show_result(path: str) -> None:
    p = Path(path)
    if not p.exists():
        return
    st.success(f"Wrote `{p}`")
    try:
        f = read_export_meta(p).get("filter")
    except InfosftError:
        f = None  # replaced meanwhile by something else: the file itself is what it is
    if isinstance(f, dict):
        done = {"keep": "kept", "drop": "dropped"}.get(f.get("mode"), f.get("mode"))
        st.caption(f"Curated: {done} the {f.get('matched')} of {f.get('of')} "
                   f"examples matching `{' and '.join(map(str, f.get('where', [])))}` "
                   "(recorded in its metadata as `filter`).")
    kind = "parquet" if p.suffix == ".parquet" else "json"
    st.code(f'import datasets\nds = datasets.load_dataset("{kind}", data_files="{p}", '
            'split="train")', language="python")
    size = p.stat().st_size
    if size <= DOWNLOAD_LIMIT:
        st.download_button(f"Download {p.name} ({size / 1e6:.1f} MB)", data=p.read_bytes(),
                           file_name=p.name, key="export_download")
    else:  # the browser download goes through server memory; big files: use the path
        st.info(f"{size / 1e9:.1f} GB: too large to download through the browser; "
                "copy it from the path above.")


state.guard(body)
