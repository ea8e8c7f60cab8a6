"""The infosft browser app (``infosft app``): a multipage Streamlit app that opens on
the bundled pre-scored sample run. Pages live in ``app/views/``; each is a thin
script over ``analysis`` functions. (Not ``app/pages/``: Streamlit treats a ``pages/``
folder next to the main script as legacy multipage mode, and a direct URL such as
``/tune`` would then run the page script alone, without this file's navigation.)"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from infosft.app import state
from infosft.app.render import knobs_text

st.set_page_config(page_title="infosft", page_icon=":material/target:", layout="wide")
state.init()

PAGES = [
    st.Page("views/data.py", title="Data & scoring", icon=":material/folder_open:", url_path="data"),
    st.Page("views/overview.py", title="Overview", icon=":material/bar_chart:", url_path="overview", default=True),
    st.Page("views/tune.py", title="Tune", icon=":material/tune:", url_path="tune"),
    st.Page("views/examples.py", title="Examples", icon=":material/table_rows:", url_path="examples"),
    st.Page("views/token_view.py", title="Token view", icon=":material/text_fields:", url_path="tokens"),
    st.Page("views/export.py", title="Export", icon=":material/download:", url_path="export"),
    st.Page("views/train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("views/evaluate.py", title="Evaluate", icon=":material/compare_arrows:", url_path="evaluate"),
]
page = st.navigation(PAGES)

with st.sidebar:
    run_path = Path(st.session_state["run_path"])
    st.caption("Active run")
    st.markdown(f"**{run_path.name}**  \n`{run_path}`")
    s = state.settings()
    st.caption("Chosen scheme")
    st.markdown(knobs_text(s.scheme, s.knobs()))

page.run()
