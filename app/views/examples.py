"""Examples: one row per example under the chosen scheme; pick one to open it in the
token view."""

import streamlit as st

from infosft.analysis.table import SORTABLE, examples_view
from infosft.app import state
from infosft.app.render import knobs_text


#: The table's column headers, for the sort box (every SORTABLE column has one).
SORT_LABELS = {"example_id": "example id", "mean_q": "mean q", "min_q": "min q",
               "mean_weight": "mean w", "zero_weight_share": "share w = 0",
               "n_tokens": "tokens", "n_target": "target tokens"}


def open_example(example_id: int) -> None:
    st.session_state["example_id"] = int(example_id)
    st.switch_page("views/token_view.py")


def body() -> None:
    st.title("Examples")
    run = state.active_run()
    s = state.settings()
    st.caption(f"Weights under {knobs_text(s.scheme, s.knobs())} (change on the Tune page). "
               "Click a row to open it in the Token view.")
    a, b, c, d = st.columns([3, 2, 2, 1])
    search = a.text_input("Search text", key="ex_search", placeholder="words in the record")
    mean_q = b.slider("Mean q", 0.0, 1.0, (0.0, 1.0), step=0.01, key="ex_mean_q")
    sort_by = c.selectbox("Sort by", SORTABLE, key="ex_sort", format_func=SORT_LABELS.get)
    desc = d.toggle("Desc.", key="ex_desc")
    trunc = d.toggle("Truncated only", key="ex_trunc")
    t = state.example_targets(run)
    table = examples_view(t, state.examples(run), s.scheme, s.knobs(),
                          search=search, truncated_only=trunc, mean_q=mean_q, sort_by=sort_by,
                          descending=desc)
    if getattr(t, "is_binned", False):
        bound = t.bound(s.scheme, **s.knobs())
        st.caption(state.EXAMPLES_NEED_TOKENS.format(why=t.missing(s.scheme, short=True))
                   if bound is None else state.EXAMPLES_EXACT if not any(bound.values()) else
                   state.EXAMPLES_BINNED.format(mean=bound["mean_weight"],
                                                zero=bound["zero_weight_share"]))
    n_all = state.examples(run).height
    st.caption(f"{table.height:,} of {n_all:,} examples" + (
        f"; the first {state.ROWS_UP_TO:,} shown (search, filter or sort for the others)"
        if table.height > state.ROWS_UP_TO else ""))
    table = table.head(state.ROWS_UP_TO)
    event = st.dataframe(
        table, key="ex_table", hide_index=True, on_select="rerun", selection_mode="single-row",
        column_config={
            "mean_q": st.column_config.NumberColumn("mean q", format="%.3f"),
            "min_q": st.column_config.NumberColumn("min q", format="%.2e"),
            "mean_weight": st.column_config.NumberColumn("mean w", format="%.3f"),
            "zero_weight_share": st.column_config.ProgressColumn(
                "share w = 0", min_value=0.0, max_value=1.0, format="percent"),
            "preview": st.column_config.TextColumn("record", width="large")})
    rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
    if rows:
        open_example(table["example_id"][rows[0]])
    if table.height:
        x, y = st.columns([2, 5])
        pick = x.selectbox("Example", table["example_id"].to_list(), key="ex_pick")
        if y.button("Open in Token view", key="ex_open"):
            open_example(pick)


state.guard(body)
