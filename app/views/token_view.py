"""Token view: one example with every token coloured by q, logp or weight; hover a
token for its numbers and top-k alternatives; the same example under all schemes."""

import polars as pl
import streamlit as st

from infosft.analysis.view import token_view
from infosft.app import state
from infosft.app.render import SCHEME_LABELS, legend_html, token_html
from infosft.weights import SCHEMES


def body() -> None:
    st.title("Token view")
    run = state.active_run()
    s = state.settings()
    ids = state.examples(run)["example_id"].to_list()
    if not ids:
        st.info("This run has no examples.")
        return
    current = st.session_state.get("example_id")
    a, b, c = st.columns([2, 2, 2])
    example_id = a.selectbox("Example", ids, index=ids.index(current) if current in ids else 0,
                             key="tv_example")
    st.session_state["example_id"] = example_id
    color_by = b.radio("Colour by", ("q", "logp", "weight"), horizontal=True, key="tv_color")
    scheme = c.selectbox("Weight scheme", SCHEMES, index=SCHEMES.index(s.scheme),
                         format_func=SCHEME_LABELS.get, key="tv_scheme",
                         disabled=color_by != "weight")
    view = token_view(run, example_id, state.targets(run), state.vocab(run), s)
    tgt = view.filter(pl.col("is_target"))
    cols = st.columns(2 + len(SCHEMES))
    cols[0].metric("Target tokens", f"{tgt.height:,} of {view.height:,}")
    cols[1].metric("Mean q", f"{tgt['q'].mean():.3f}" if tgt.height else "–")
    for col, sc in zip(cols[2:], SCHEMES):
        col.metric(f"Mean w {SCHEME_LABELS[sc]}", f"{tgt[f'w_{sc}'].mean():.3f}"
                   if tgt.height else "–")
    st.html(legend_html(color_by, scheme))
    st.html(token_html(view, color_by, scheme))
    with st.expander("Side by side: the same example under SFT / DFT / InfoSFT / ProFit",
                     expanded=True):
        st.caption("The target tokens coloured by their weight under each scheme (white = 0, "
                   "blue = the largest weight, at least 1); hover for the numbers.")
        for col, sc in zip(st.columns(len(SCHEMES)), SCHEMES):
            col.markdown(f"**{SCHEME_LABELS[sc]}**")
            col.html(token_html(view, "weight", sc, targets_only=True))


state.guard(body)
