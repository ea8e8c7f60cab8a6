"""Overview: how confident the base model already is on the target tokens, and where
each scheme puts the learning signal."""

import streamlit as st

from infosft.analysis.tune import overview_facts, tune_view
from infosft.app import charts, state
from infosft.app.render import fact_cards, scheme_labels, scheme_table_view


def body() -> None:
    st.title("Overview")
    run = state.active_run()
    t, ex, s = state.targets(run), state.examples(run), state.settings()
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


state.guard(body)
