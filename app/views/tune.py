"""Tune: move C (or P) and the ProFit knobs; every metric and chart follows."""

import streamlit as st

from infosft.analysis import breakdown
from infosft.analysis.tune import tune_view
from infosft.app import charts, knobs, state
from infosft.app.render import knobs_text, scheme_labels, scheme_table_view, summary_cards


def body() -> None:
    st.title("Tune")
    run = state.active_run()
    t = state.targets(run)
    if t.is_binned:
        st.caption(state.BINNED_NOTE)
    left, right = st.columns([1, 3])
    with left:
        knobs.knob_widgets("settings", "tune", missing=state.scheme_missing(run, t))
        auto = state.suggested_c(run)
        st.button(f"Auto C = {auto['C']:.3f} (P = {auto['P']:.3f})", key="auto_c",
                  on_click=knobs.set_c, args=("settings", "tune", auto["C"]))
        st.caption(auto["rule"])
        s = state.settings()
        if st.button("Use these knobs in Export", key="to_export", type="primary"):
            st.switch_page("views/export.py")  # Export reads the same settings
        if st.button("Train with these knobs", key="to_train"):
            st.switch_page("views/train.py")  # Train reads the same settings
    s = state.settings()
    with right:
        log_x = st.toggle("log-scale q axis", key="tune_log_x")
        view = tune_view(t, s, bins=50, log_x=log_x)
        st.subheader(knobs_text(s.scheme, s.knobs()))
        if view["summary"] is None:  # the run lacks what the chosen scheme reads
            st.error(t.missing(s.scheme, knobs=s.knobs()))
        else:
            cards = summary_cards(view["summary"])
            for row in (cards[:3], cards[3:]):
                for col, (label, value) in zip(st.columns(len(row)), row):
                    col.metric(label, value)
        st.dataframe(scheme_table_view(view["schemes"], scheme_labels(s)), hide_index=True,
                     key="tune_schemes")
        a, b = st.columns(2)
        a.plotly_chart(charts.q_histogram_with_curves(view["hist"], view["curves"], log_x=log_x,
                                                      labels=scheme_labels(s)), key="tune_hist")
        b.plotly_chart(charts.weight_share_histogram(view["hist"], log_x=log_x,
                                                     labels=scheme_labels(s)), key="tune_whist")
        if view["summary"] is not None:
            by_column(run, t, s, view["weights"])


def by_column(run, t, s, weights) -> None:
    """Which group of a record column the chosen scheme emphasizes."""
    st.subheader("By record column")
    ex = state.examples(run)
    columns = breakdown.run_columns(run, examples=ex)
    if not columns:
        st.caption("No field of this run's records splits it into 2 to 50 groups (strings "
                   "or integers); `infosft stats RUN --by COLUMN` breaks a run down by any "
                   "field.")
        return
    column = st.selectbox("Break down by", columns, key="tune_by",
                          help="a field of the records with 2 to 50 distinct values")
    with st.spinner(f"Breaking the run down by {column}..."):  # once per run and column
        g = breakdown.grouping(run, column, targets=t, examples=ex)
        g.over(t, s.scheme, s.knobs())  # and over the cell table the scheme reads
    table = g.table(t, {s.scheme: s.knobs()}, {s.scheme: weights[s.scheme]})
    st.plotly_chart(charts.group_share_bars(table, [s.scheme], scheme_labels(s), column),
                    key="tune_by_chart")
    st.dataframe(breakdown.display_table(table, s.scheme), hide_index=True,
                 key="tune_by_table")
    st.caption(" ".join(filter(None, [g.note, "Emphasis: the group's share of the weight over its share of the tokens "
               "(above 1: the scheme leans on it more than its size); effective tokens "
               "and the q bands are within the group."])))


state.guard(body)
