"""The scheme-knob widgets (scheme, C with its equivalent P, ProFit threshold(s),
direction, seed), bound to a :class:`analysis.tune.Settings` in session state.

Widget state is dropped by Streamlit when a page stops rendering a widget, so the
source of truth is the ``Settings`` object; widgets are re-seeded from it and write
back to it in their callbacks. C and P are two views of one knob: editing either
updates the other.
"""

from __future__ import annotations

import streamlit as st

from infosft.app.render import SCHEME_LABELS
from infosft.weights import DIRECTIONS, SCHEMES, c_from_p, p_from_c

C_RANGE = (0.05, 8.0)
P_RANGE = (0.5125, 0.9997)  # sigmoid of C_RANGE


def _keys(prefix: str) -> dict[str, str]:
    return {k: f"{prefix}_{k}" for k in ("scheme", "C", "P", "threshold", "middle",
                                         "direction", "seed")}


def _agrees(name: str, widget, value) -> bool:
    """Whether a widget's value already shows the settings' ``value`` (P within the
    rounding of C to 4 decimals, which moves P by < 2e-5)."""
    if name in ("C", "P", "threshold"):
        return abs(float(widget) - float(value)) <= (1e-4 if name == "P" else 1e-9)
    if name == "middle":
        return tuple(map(float, widget)) == tuple(value)
    return widget == value


def seed_widgets(state_key: str, prefix: str, force: bool = False) -> None:
    """Put the settings' values into the widgets' state: where missing, where the
    settings changed elsewhere since (e.g. Export's widgets after C moved on Tune: the
    settings are the one source, the widgets only show them), or all with ``force``."""
    s, k, ss = st.session_state[state_key], _keys(prefix), st.session_state
    values = {"scheme": s.scheme, "C": float(min(max(s.C, C_RANGE[0]), C_RANGE[1])),
              "P": float(min(max(p_from_c(s.C), P_RANGE[0]), P_RANGE[1])),
              "threshold": float(s.threshold), "middle": tuple(map(float, s.middle)),
              "direction": s.direction, "seed": int(s.seed)}
    for name, value in values.items():
        if force or k[name] not in ss or not _agrees(name, ss[k[name]], value):
            ss[k[name]] = value


def _update(state_key: str, prefix: str, name: str) -> None:
    """Callback: copy one widget's value into the settings (C <-> P kept in step)."""
    ss, k = st.session_state, _keys(prefix)
    value = ss[k[name]]
    if name == "C":
        ss[k["P"]] = float(min(max(p_from_c(value), P_RANGE[0]), P_RANGE[1]))
    elif name == "P":
        name, value = "C", round(c_from_p(value), 4)
        ss[k["C"]] = float(min(max(value, C_RANGE[0]), C_RANGE[1]))
    elif name == "middle":
        value = tuple(map(float, value))
    ss[state_key] = ss[state_key].with_(**{name: value})


def set_c(state_key: str, prefix: str, C: float) -> None:
    """Set C programmatically (e.g. the auto-C button) and re-seed the widgets."""
    st.session_state[state_key] = st.session_state[state_key].with_(C=round(float(C), 4))
    seed_widgets(state_key, prefix, force=True)


def knob_widgets(state_key: str = "settings", prefix: str = "tune",
                 show_scheme: bool = True) -> None:
    """Draw the widgets; every change lands in ``st.session_state[state_key]``."""
    seed_widgets(state_key, prefix)
    k = _keys(prefix)

    def cb(name):
        return dict(on_change=_update, args=(state_key, prefix, name))

    if show_scheme:
        st.selectbox("Scheme", SCHEMES, key=k["scheme"], format_func=SCHEME_LABELS.get,
                     help="the scheme whose metrics, table colours and export you see",
                     **cb("scheme"))
    st.markdown("**InfoSFT**")
    st.slider("C", *C_RANGE, step=0.01, key=k["C"],
              help="w = q·max(0, 1 − logit(q)/C); weight 0 for q ≥ P = sigmoid(C)", **cb("C"))
    st.number_input("P (equivalent: weight 0 for q ≥ P)", *P_RANGE, step=0.005, format="%.4f",
                    key=k["P"], help="C = log(P / (1 − P))", **cb("P"))
    st.markdown("**ProFit**")
    st.selectbox("Direction", DIRECTIONS, key=k["direction"],
                 help="higher keeps q ≥ τ; lower keeps q ≤ τ; middle keeps low ≤ q ≤ high; "
                 "random drops each token with probability τ", **cb("direction"))
    s = st.session_state[state_key]
    if s.direction == "middle":
        st.slider("Thresholds (low, high)", 0.0, 1.0, step=0.01, key=k["middle"], **cb("middle"))
    else:
        st.slider("Threshold τ", 0.0, 1.0, step=0.01, key=k["threshold"], **cb("threshold"))
    if s.direction == "random":
        st.number_input("Seed", 0, 2**31 - 1, step=1, key=k["seed"], **cb("seed"))
