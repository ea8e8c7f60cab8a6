"""Token view: one example with every token coloured by q, logp or weight (each
scheme on its own scale, its largest weight in the example, or a fixed 0..1); hover or
focus a token for its card (numbers, weights, top-k alternatives); the same example
under all schemes."""

import polars as pl
import streamlit as st

from infosft.analysis.view import nearest_id, ranked_here, token_view
from infosft.app import state
from infosft.app.render import (SCALES, SCHEME_LABELS, legend_html, token_html, weight_scale,
                                weight_schemes)

RANKED_HERE = ("This run is large, so this page reads only this example's tokens: {} "
               "ranks this example's tokens among themselves, not among the whole run's as "
               "`infosft stats` and the export do (the other weights are the run's own).")
AT_THE_CUT = ("This run is large, so this page reads only this example's tokens: excess "
              "over the run compares each token with the run's cut from a histogram of its "
              "excess; {} of them lie within 0.01 nats of the cut and show the share of "
              "such tokens the run keeps.")


def body() -> None:
    st.title("Token view")
    run = state.active_run()
    s = state.settings()
    ids = state.examples(run)["example_id"].to_numpy()
    if not len(ids):
        st.info("This run has no examples.")
        return
    current = st.session_state.get("example_id")
    a, b, c, d = st.columns([2, 2, 2, 2])
    if len(ids) <= state.ROWS_UP_TO:
        listed = ids.tolist()
        example_id = a.selectbox("Example", listed, key="tv_example",
                                 index=listed.index(current) if current in listed else 0)
    else:  # a box of every id is sent whole on each rerun: an id instead
        if current is not None and current != st.session_state.get("tv_shown"):
            st.session_state["tv_example_id"] = int(current)  # chosen elsewhere (Examples)
        wanted = a.number_input("Example", int(ids[0]), int(ids[-1]), key="tv_example_id",
                                help=f"an example id, {ids[0]} to {ids[-1]}")
        example_id = nearest_id(ids, int(wanted))
        if example_id != wanted:
            a.caption(f"Example {wanted} is not in this run; showing {example_id}.")
    st.session_state["example_id"] = st.session_state["tv_shown"] = example_id
    color_by = b.radio("Colour by", ("q", "logp", "weight"), horizontal=True, key="tv_color")
    t = state.example_targets(run)
    view = token_view(run, example_id, t, state.vocab(run), s)
    schemes = weight_schemes(view.columns)  # those the run supports
    here = ranked_here(schemes, s, t) if getattr(t, "is_binned", False) else []
    if here:
        st.caption(RANKED_HERE.format(", ".join(SCHEME_LABELS.get(sc, sc) for sc in here)))
    if getattr(t, "is_binned", False) and "excess" in schemes:
        w = view.filter(pl.col("is_target"))["w_excess"]
        split = int(((w > 0) & (w < 1)).sum())
        if split:  # excess per=all at the cut: a share, not 0 or 1
            st.caption(AT_THE_CUT.format(split))
    scheme = c.selectbox("Weight scheme", schemes,
                         index=schemes.index(s.scheme) if s.scheme in schemes else 0,
                         format_func=SCHEME_LABELS.get, key="tv_scheme",
                         disabled=color_by != "weight")
    scale = d.radio("Weight colour scale", SCALES, horizontal=True, key="tv_scale",
                    help="per scheme max: each scheme's largest weight in this example gets "
                    "the full colour; fixed 0..1: weight 1 does, for every scheme")
    tgt = view.filter(pl.col("is_target"))
    cols = st.columns(2 + len(schemes))
    cols[0].metric("Target tokens", f"{tgt.height:,} of {view.height:,}")
    cols[1].metric("Mean q", f"{tgt['q'].mean():.3f}" if tgt.height else "–")
    for col, sc in zip(cols[2:], schemes):
        col.metric(f"Mean w {SCHEME_LABELS[sc]}", f"{tgt[f'w_{sc}'].mean():.3f}"
                   if tgt.height else "–")
    st.html(legend_html(color_by, scheme, weight_scale(view, scheme, scale), scale))
    st.html(token_html(view, color_by, scheme, scale=scale))
    with st.expander("Side by side: the same example under "
                     + " / ".join(SCHEME_LABELS.get(sc) for sc in schemes), expanded=True):
        st.caption("The target tokens coloured by their weight under each scheme (white = 0, "
                   + ("blue = that scheme's largest weight in this example"
                      if scale == SCALES[0] else "blue = 1 for every scheme")
                   + "); hover or focus a token for its numbers.")
        for col, sc in zip(st.columns(len(schemes)), schemes):
            top = weight_scale(view, sc, scale)
            col.markdown(f"**{SCHEME_LABELS.get(sc)}**" + (f" · blue = {top:.3g}"
                                                      if scale == SCALES[0] else ""))
            col.html(token_html(view, "weight", sc, targets_only=True, scale=scale))


state.guard(body)
