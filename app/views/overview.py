"""Overview: how confident the base model already is on the target tokens, and where
each scheme puts the learning signal."""

import streamlit as st

from infosft.analysis import breakdown
from infosft.analysis.tune import overview_facts, tune_view
from infosft.app import charts, state
from infosft.app.render import fact_cards, scheme_labels, scheme_table_view


def body() -> None:
    st.title("Overview")
    run = state.active_run()
    t, ex, s = state.targets(run), state.examples(run), state.settings()
    if t.is_binned:
        st.caption(state.BINNED_NOTE)
    st.caption(f"run `{run.path}` · model {run.meta()['model']['name']} · "
               f"data `{run.meta()['dataset']['source']}`")
    cards = fact_cards(overview_facts(t, ex))
    for col, (label, value) in zip(st.columns(len(cards)), cards):
        col.metric(label, value)
    log_x = st.toggle("log-scale q axis", key="overview_log_x",
                      help="log bins from 1e-6 to 1; smaller q fall into the first bin")
    view = tune_view(t, s, bins=50, log_x=log_x)
    left, right = st.columns(2)
    left.plotly_chart(charts.q_histogram_with_curves(view["hist"], view["curves"], log_x=log_x,
                                                     labels=scheme_labels(s)), key="ov_hist")
    right.plotly_chart(charts.weight_share_histogram(view["hist"], log_x=log_x, labels=scheme_labels(s)),
                       key="ov_whist")
    st.subheader("The schemes side by side")
    st.dataframe(scheme_table_view(view["schemes"], scheme_labels(s)), hide_index=True,
                 key="ov_schemes")
    st.caption("Left: how many target tokens have each q, with each scheme's weight curve "
               "w(q). Right: the same bins weighted by w, as a share of each scheme's total "
               "weight. Change C and the ProFit threshold on the Tune page.")
    st.subheader("By record column")
    columns = breakdown.run_columns(run, examples=ex)
    if not columns:
        st.caption(NO_COLUMN)
        return
    column = st.selectbox("Break down by", columns, key="ov_by", help=BY_HELP)
    schemes = list(view["weights"])  # those the run supports
    with st.spinner(f"Breaking the run down by {column}..."):  # once per run and column
        g = breakdown.grouping(run, column, targets=t, examples=ex)
        for sc in schemes:  # and over each cell table a scheme reads (a large run's)
            g.over(t, sc, s.knobs(sc))
    table = g.table(t, {sc: s.knobs(sc) for sc in schemes}, view["weights"])
    st.plotly_chart(charts.group_share_bars(table, [sc for sc in schemes if sc != "sft"],
                                            scheme_labels(s), column), key="ov_by_chart")
    st.dataframe(breakdown.display_table(table, None, scheme_labels(s)), hide_index=True,
                 key="ov_by_table")
    st.caption(" ".join(filter(None, [g.note, "SFT's share of the weight is the share of the tokens. "
               "Per scheme mean weight, effective tokens and weight per q band: Tune, or "
               f"`infosft stats RUN --by {column}`."])))


BY_HELP = ("a field of the records with 2 to 50 distinct values (strings or integers); "
           "(none) collects the records without it")
NO_COLUMN = ("No field of this run's records splits it into 2 to 50 groups (strings or "
             "integers), so there is no breakdown by source or task; "
             "`infosft stats RUN --by COLUMN` breaks a run down by any field.")


state.guard(body)
