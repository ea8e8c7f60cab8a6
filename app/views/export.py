"""Export: the weighted dataset (scheme and knobs prefilled from Tune) into the
workspace, with a download and the two lines that load it."""

import streamlit as st

from infosft.analysis.export import export_weighted
from infosft.app import knobs, state, workspace
from infosft.app.render import knobs_text

DOWNLOAD_LIMIT = 500 * 1024**2


def body() -> None:
    st.title("Export")
    run = state.active_run()
    ss = st.session_state
    if ss.get("export_settings") is None:
        ss["export_settings"] = state.settings()
    if ss.pop("export_from_tune", False):
        knobs.seed_widgets("export_settings", "export", force=True)
    left, right = st.columns([1, 2])
    with left:
        knobs.knob_widgets("export_settings", "export")
    s = ss["export_settings"]
    with right:
        st.subheader(knobs_text(s.scheme, s.knobs()))
        fmt = st.radio("Format", (".parquet", ".jsonl"), horizontal=True, key="export_fmt")
        default = f"{run.path.name}-{s.scheme}"
        name = st.text_input("File name (in the workspace's exports/)", value=default,
                             key="export_name")
        overwrite = st.checkbox("Overwrite an existing file", key="export_overwrite")
        if st.button("Export", type="primary", key="export_go"):
            out = workspace.inside(workspace.subdir("exports"), name.removesuffix(fmt) + fmt,
                                   "file name")
            with st.spinner("Writing the weighted dataset..."):
                ss["export_last"] = str(export_weighted(run.path, out, s.scheme,
                                                        overwrite=overwrite, **s.knobs()))
        last = ss.get("export_last")
        if last:
            show_result(last)


def show_result(path: str) -> None:
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        return
    st.success(f"Wrote `{p}`")
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
