"""The scheme-knob widgets, bound to a :class:`analysis.tune.Settings` in session state.

Drawn from the registry (:mod:`infosft.schemes`): the scheme box offers the schemes the
active run supports (the others are named in a caption with what they need), a text
box loads a user's ``module:function`` scheme, and every scheme's knobs get widgets
from their :class:`~infosft.schemes.Knob` declarations (a float with a range: a slider;
other numbers: a number box; text with choices: a select box). InfoSFT's C with its
equivalent P and ProFit's threshold(s), direction and seed keep widgets of their own.

Widget state is dropped by Streamlit when a page stops rendering a widget, so the
source of truth is the ``Settings`` object; widgets are re-seeded from it and write
back to it in their callbacks. C and P are two views of one knob: editing either
updates the other.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import streamlit as st

from infosft.app.render import SCHEME_LABELS
from infosft.schemes import BUILTIN, Knob, get as get_scheme, names as scheme_names
from infosft.weights import DIRECTIONS, c_from_p, p_from_c

C_RANGE = (0.05, 8.0)
P_RANGE = (0.5125, 0.9997)  # sigmoid of C_RANGE
#: Schemes whose knobs have widgets of their own here (the rest: from their Knobs).
SPECIAL = ("infosft", "profit")
#: Session key: the user's ``module:function`` schemes loaded in this session.
USER_SCHEMES = "user_schemes"
#: A float knob whose range spans more than this gets a number box, not a slider.
SLIDER_SPAN = 1000.0


def _keys(prefix: str) -> dict[str, str]:
    return {k: f"{prefix}_{k}" for k in ("scheme", "C", "P", "threshold", "middle",
                                         "direction", "seed", "custom", "custom_error")}


def knob_key(prefix: str, scheme: str, knob: str) -> str:
    """The widget key of one knob of a scheme drawn from its declaration."""
    return f"{prefix}_{scheme}_{knob}"


def _generic() -> list[str]:
    """Registered schemes whose knobs are drawn from their declarations."""
    return [s for s in scheme_names() if s not in SPECIAL and get_scheme(s).knobs]


def _step(k: Knob) -> float:
    span = float(k.high) - float(k.low)
    return 0.01 if span <= 1 else 0.05 if span <= 10 else span / 200


def _kind(k: Knob) -> str:
    if k.kind is str:
        return "select" if k.choices else "text"
    if k.kind is int:
        return "int"
    if (k.low is not None and k.high is not None and math.isfinite(k.low)
            and math.isfinite(k.high) and 0 < k.high - k.low <= SLIDER_SPAN):
        return "slider"
    return "number"


def _slider_range(k: Knob) -> tuple[float, float]:
    step = _step(k)
    return (float(k.low) + (step if k.open_low else 0.0),
            float(k.high) - (step if k.open_high else 0.0))


def _shown(k: Knob, value: Any) -> Any:
    """A knob's value as its widget holds it (a slider's clamped into its range)."""
    kind = _kind(k)
    if kind == "slider":
        lo, hi = _slider_range(k)
        return float(min(max(float(value), lo), hi))
    if kind == "number":
        return float(value)
    if kind == "int":
        return int(value)
    return value


def _agrees(name: str, widget, value) -> bool:
    """Whether a widget's value already shows the settings' ``value`` (P within the
    rounding of C to 4 decimals, which moves P by < 2e-5)."""
    if name in ("C", "P", "threshold") or (isinstance(value, float)
                                           and isinstance(widget, (int, float))):
        return abs(float(widget) - float(value)) <= (1e-4 if name == "P" else 1e-9)
    if name == "middle":
        return tuple(map(float, widget)) == tuple(value)
    return widget == value


def seed_widgets(state_key: str, prefix: str, force: bool = False) -> None:
    """Put the settings' values into the widgets' state: where missing, where the
    settings changed elsewhere since (e.g. Export's widgets after C moved on Tune: the
    settings are the one source, the widgets only show them), or all with ``force``."""
    s, k, ss = st.session_state[state_key], _keys(prefix), st.session_state
    values = {k["scheme"]: s.scheme, k["C"]: float(min(max(s.C, C_RANGE[0]), C_RANGE[1])),
              k["P"]: float(min(max(p_from_c(s.C), P_RANGE[0]), P_RANGE[1])),
              k["threshold"]: float(s.threshold), k["middle"]: tuple(map(float, s.middle)),
              k["direction"]: s.direction, k["seed"]: int(s.seed)}
    names = {k[n]: n for n in ("scheme", "C", "P", "threshold", "middle", "direction",
                               "seed")}
    for scheme in _generic():
        for knob in get_scheme(scheme).knobs:
            value = s.value(scheme, knob.name)
            if value is not None:
                try:
                    values[knob_key(prefix, scheme, knob.name)] = _shown(knob, value)
                except (TypeError, ValueError):
                    pass  # a value its widget cannot show: the widget keeps its own
    for key, value in values.items():
        if force or key not in ss or not _agrees(names.get(key, ""), ss[key], value):
            ss[key] = value


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


def _update_knob(state_key: str, prefix: str, scheme: str, name: str) -> None:
    """Callback: copy a declared knob's widget value into the settings."""
    ss = st.session_state
    ss[state_key] = ss[state_key].with_knob(scheme, name, ss[knob_key(prefix, scheme, name)])


def _load_custom(state_key: str, prefix: str) -> None:
    """Callback of the ``module:function`` box: load the scheme and choose it, or keep
    the reason it failed (shown as an error under the box)."""
    ss, k = st.session_state, _keys(prefix)
    spec = (ss.get(k["custom"]) or "").strip()
    ss[k["custom_error"]] = None
    if not spec:
        return
    try:
        get_scheme(spec)
    except Exception as e:  # noqa: BLE001 - the user's code: one line, never a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        ss[k["custom_error"]] = first
        return
    if spec not in BUILTIN and spec not in ss.get(USER_SCHEMES, []):
        ss[USER_SCHEMES] = [*ss.get(USER_SCHEMES, []), spec]
    ss[state_key] = ss[state_key].with_(scheme=spec)
    ss[k["scheme"]] = spec


def set_c(state_key: str, prefix: str, C: float) -> None:
    """Set C programmatically (e.g. the auto-C button) and re-seed the widgets."""
    st.session_state[state_key] = st.session_state[state_key].with_(C=round(float(C), 4))
    seed_widgets(state_key, prefix, force=True)


def scheme_text(name: str) -> str:
    """A scheme as the scheme box shows it: its label (a user's: with its spec)."""
    label = SCHEME_LABELS.get(name)
    return label if name in BUILTIN or label == name else f"{label} ({name})"


def offered(missing: Callable[[str], str | None] | None,
            current: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The schemes the scheme box offers (the built-ins and this session's user schemes
    that ``missing`` has no reason against; all of them without ``missing``) and, for
    the others, why not. The ``current`` scheme is always offered (its reason shows)."""
    candidates = list(dict.fromkeys([*BUILTIN, *st.session_state.get(USER_SCHEMES, [])]))
    if current is not None and current not in candidates and current in scheme_names():
        candidates.append(current)
    why = {s: r for s in candidates if missing is not None and (r := missing(s))}
    return [s for s in candidates if s not in why or s == current], why


def _declared(state_key: str, prefix: str, scheme: str) -> None:
    """Widgets of one scheme's declared knobs."""
    ss = st.session_state
    for knob in get_scheme(scheme).knobs:
        key = knob_key(prefix, scheme, knob.name)
        if key not in ss:
            continue  # a default of None: nothing to show
        cb = dict(on_change=_update_knob, args=(state_key, prefix, scheme, knob.name),
                  help=f"{knob.help} ({knob.range_text()})")
        kind = _kind(knob)
        if kind == "slider":
            st.slider(knob.name, *_slider_range(knob), step=_step(knob), key=key, **cb)
        elif kind == "select":
            st.selectbox(knob.name, knob.choices, key=key, **cb)
        elif kind == "int":
            lo = None if knob.low is None else int(math.ceil(knob.low))
            hi = None if knob.high is None else int(math.floor(knob.high))
            st.number_input(knob.name, lo, hi, step=1, key=key, **cb)
        elif kind == "number":
            finite = [x if x is not None and math.isfinite(x) else None
                      for x in (knob.low, knob.high)]
            st.number_input(knob.name, *finite, step=0.01, format="%.4g", key=key, **cb)
        else:
            st.text_input(knob.name, key=key, **cb)


def knob_widgets(state_key: str = "settings", prefix: str = "tune",
                 show_scheme: bool = True,
                 missing: Callable[[str], str | None] | None = None) -> None:
    """Draw the widgets; every change lands in ``st.session_state[state_key]``.

    ``missing(scheme)``: why the active run cannot be weighted by a scheme (None: it
    can), e.g. ``lambda s: targets.missing(s, short=True)``; those schemes are not
    offered, and a caption names what each needs. Without it every scheme is offered
    (training computes the fields it needs)."""
    seed_widgets(state_key, prefix)
    k, ss = _keys(prefix), st.session_state
    s = ss[state_key]
    options, why = offered(missing, s.scheme)

    def cb(name):
        return dict(on_change=_update, args=(state_key, prefix, name))

    if show_scheme:
        st.selectbox("Scheme", options, key=k["scheme"], format_func=scheme_text,
                     help="the scheme whose metrics, table colours and export you see",
                     **cb("scheme"))
        if s.scheme in why:
            st.warning(why[s.scheme])
        for name, reason in why.items():
            if name != s.scheme:
                st.caption(f"Not offered: {reason}.")
        st.text_input("Your own scheme (module:function)", key=k["custom"],
                      placeholder="e.g. myschemes:focal",
                      help="a Python function in a module importable from the app's "
                      "working directory, whose parameters name the fields it reads (logp, "
                      "entropy_top20, logp_ref, example) and whose keyword parameters "
                      "with defaults are its knobs: def focal(logp, gamma=2.0): return "
                      "(1 - logp.exp()) ** gamma",
                      on_change=_load_custom, args=(state_key, prefix))
        if ss.get(k["custom_error"]):
            st.error(ss[k["custom_error"]])
    st.markdown("**InfoSFT**")
    st.slider("C", *C_RANGE, step=0.01, key=k["C"],
              help="w = q·max(0, 1 − logit(q)/C); weight 0 for q ≥ P = sigmoid(C)", **cb("C"))
    st.number_input("P (equivalent: weight 0 for q ≥ P)", *P_RANGE, step=0.005, format="%.4f",
                    key=k["P"], help="C = log(P / (1 − P))", **cb("P"))
    st.markdown("**ProFit**")
    st.selectbox("Direction", DIRECTIONS, key=k["direction"],
                 help="higher keeps q ≥ τ; lower keeps q ≤ τ; middle keeps low ≤ q ≤ high; "
                 "random drops each token with probability τ", **cb("direction"))
    s = ss[state_key]
    if s.direction == "middle":
        st.slider("Thresholds (low, high)", 0.0, 1.0, step=0.01, key=k["middle"], **cb("middle"))
    else:
        st.slider("Threshold τ", 0.0, 1.0, step=0.01, key=k["threshold"], **cb("threshold"))
    if s.direction == "random":
        st.number_input("Seed", 0, 2**31 - 1, step=1, key=k["seed"], **cb("seed"))
    for scheme in options:
        if scheme in SPECIAL or scheme in why or not get_scheme(scheme).knobs:
            continue
        sch = get_scheme(scheme)
        st.markdown(f"**{scheme_text(scheme)}**", help=f"{sch.formula} ({sch.citation})")
        _declared(state_key, prefix, scheme)
