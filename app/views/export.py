"""Export: the weighted dataset into the workspace, with a download and the two lines
that load it. The knobs are the session's one set (``state.settings()``), the same the
Tune page moves and the sidebar shows: opened from the sidebar or from Tune's button,
Export shows and exports what was last chosen, and a change here is a change there."""

from pathlib import Path

import streamlit as st

from infosft.analysis.export import export_weighted
from infosft.app import knobs, state, workspace
from infosft.app.render import export_name, knobs_text
from infosft.errors import InfosftError

DOWNLOAD_LIMIT = 500 * 1024**2
OVERWRITE = "Overwrite an existing file"


def default_name(run_name: str) -> None:
    """Keep the file name box on the default name of the knobs in force (the run, the
    scheme and its knobs) until the user types a name of their own."""
    ss, s = st.session_state, state.settings()
    default = export_name(run_name, s.scheme, s.knobs(s.scheme))
    if ss.get("export_name") in (None, "", ss.get("_export_default")):
        ss["export_name"] = default
    ss["_export_default"] = default


def body() -> None:
    st.title("Export")
    run = state.active_run()
    ss = st.session_state
    left, right = st.columns([1, 2])
    with left:
        knobs.knob_widgets("settings", "export")
    s = state.settings()
    with right:
        st.subheader(knobs_text(s.scheme, s.knobs()))
        fmt = st.radio("Format", (".parquet", ".jsonl"), horizontal=True, key="export_fmt")
        default_name(run.path.name)
        name = st.text_input("File name (in the workspace's exports/)", key="export_name")
        overwrite = st.checkbox(OVERWRITE, key="export_overwrite")
        if st.button("Export", type="primary", key="export_go"):
            out = workspace.inside(workspace.subdir(workspace.EXPORTS), name.removesuffix(fmt) + fmt,
                                   "file name")
            exists = (f"{out.name} already exists in {out.parent}; tick “{OVERWRITE}” to "
                      "replace it, or choose another file name")
            if out.exists() and not overwrite:
                st.error(exists)
                return
            try:
                with st.spinner("Writing the weighted dataset..."):
                    ss["export_last"] = str(export_weighted(run.path, out, s.scheme,
                                                            overwrite=overwrite, **s.knobs()))
            except InfosftError:
                if out.exists() and not overwrite:  # written meanwhile (another session)
                    st.error(exists)
                    return
                raise
        last = ss.get("export_last")
        if last:
            show_result(last)


def show_result(path: str) -> None:
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
