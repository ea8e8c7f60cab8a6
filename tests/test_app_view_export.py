"""The Token view's colour scales and hover cards, and the Export page's knobs and file
names (issue 17, parts 1, 6 and 9): the pure render functions checked against numbers
computed here independently, and the pages under Streamlit's AppTest."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("streamlit")

from infosft.analysis.export import read_export_meta  # noqa: E402
from infosft.analysis.stats import Targets  # noqa: E402
from infosft.analysis.store import Run  # noqa: E402
from infosft.analysis.tune import Settings  # noqa: E402
from infosft.analysis.view import token_view  # noqa: E402
from infosft.app.render import (SCALES, card, color_values, colors, export_name,  # noqa: E402
                                legend_html, token_html, weight_scale)

from tests.helpers import SAMPLE_RUN, app_page, reference_weights  # noqa: E402
from tests.helpers import SAMPLE_SCHEMES as SCHEMES  # noqa: E402  (the sample run's)

BLUE = "rgb(49,130,189)"  # the full weight colour
LABELS = {"sft": "SFT", "dft": "DFT", "infosft": "InfoSFT", "profit": "ProFit", "eaft": "EAFT"}


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(ws))
    return ws


@pytest.fixture(scope="module")
def view() -> pl.DataFrame:
    run = Run(SAMPLE_RUN)
    return token_view(run, 0, Targets.from_run(SAMPLE_RUN), run.read_vocab(), Settings())


def ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def spans(out: str) -> list[tuple[str, str]]:
    """(data-pos, background) of each target span of token_html's output."""
    return re.findall(r'<span class="t" tabindex="0" data-pos="(\d+)" style="background:([^"]+)"',
                      out)


def kv(label: str, value: str) -> str:
    """One label-value row of a hover card."""
    return f'<span class="k">{label}</span> <span class="n">{value}</span>'


def expected_blue(x: float) -> str:
    """White (0) to blue (1), written out: 255 + x * (end - 255) per channel."""
    return "rgb({},{},{})".format(*(round(255 + x * (c - 255)) for c in (49, 130, 189)))


def same_rgb(a: str, b: str) -> bool:
    """Equal colours up to one unit per channel (float32 weights against float64 ones
    round a channel ending in .5 either way)."""
    ca, cb = (tuple(map(int, x[4:-1].split(","))) for x in (a, b))
    return all(abs(x - y) <= 1 for x, y in zip(ca, cb))


# ---------------------------------------------------------------- colour scales

def test_each_scheme_has_its_own_scale(view):
    tgt = view.filter(pl.col("is_target"))
    logp = tgt["logp"].to_numpy()
    entropy = Targets.from_run(SAMPLE_RUN).fields["entropy_top20"][:len(logp)]  # example 0
    for scheme in SCHEMES:
        w = reference_weights(logp, scheme, C=Settings().C, tau=Settings().threshold,
                              entropy_top20=entropy)
        np.testing.assert_allclose(tgt[f"w_{scheme}"].to_numpy(), w, rtol=1e-5, atol=1e-7)
        top = w.max()
        assert weight_scale(view, scheme) == pytest.approx(top, rel=1e-5)
        assert weight_scale(view, scheme, "fixed 0..1") == 1.0
        out = dict(spans(token_html(view, "weight", scheme)))
        pos = tgt["position"].to_numpy()
        # the scheme's strongest token is the full colour, every token is w / top
        assert out[str(pos[w.argmax()])] == BLUE
        for p, wi in zip(pos[:20], w[:20]):
            assert same_rgb(out[str(p)], expected_blue(wi / top))
        fixed = dict(spans(token_html(view, "weight", scheme, scale="fixed 0..1")))
        for p, wi in zip(pos[:20], w[:20]):
            assert same_rgb(fixed[str(p)], expected_blue(min(wi, 1.0)))
    # InfoSFT's weights stay well below 1: on the fixed scale its strongest token is pale
    w = tgt["w_infosft"].to_numpy()
    assert w.max() < 0.6
    fixed = dict(spans(token_html(view, "weight", "infosft", scale="fixed 0..1")))
    assert fixed[str(tgt["position"][int(w.argmax())])] != BLUE


def test_scale_of_all_zero_weights_is_one():
    v = pl.DataFrame({"is_target": [True, True, False], "w_infosft": [0.0, 0.0, None]})
    assert weight_scale(v, "infosft") == 1.0
    assert colors(color_values(v, "weight", "infosft"), "weight")[:2] == ["rgb(255,255,255)"] * 2
    with pytest.raises(ValueError):
        weight_scale(v, "infosft", "log")


def test_legend_names_the_scale():
    assert "InfoSFT&#x27;s max in this example" in legend_html(
        "weight", "infosft", 0.5077, SCALES[0]).replace("'", "&#x27;")
    assert "w = 0.508" in legend_html("weight", "infosft", 0.5077)
    assert "w = 1 (fixed scale)" in legend_html("weight", "infosft", 0.5077, "fixed 0..1")
    assert "q = 1" in legend_html("q")


# ---------------------------------------------------------------- hover cards

def test_card_shows_every_number(view):
    row = view.filter(pl.col("is_target")).row(3, named=True)
    out = card(row, "dft")
    q = float(np.exp(row["logp"]))
    assert kv("q", f"{q:.4f}") in out and kv("logp", f"{row['logp']:.3f}") in out
    assert kv("rank", str(row["rank"])) in out
    assert f"{row['entropy']:.3f} nats" in out
    for s in SCHEMES:
        assert kv(LABELS[s], f"{row[f'w_{s}']:.3f}") in out
    # the chosen scheme's row stands out
    assert '<div class="r on"><span class="k">DFT</span>' in out
    for piece, p in zip(row["top_pieces"], row["top_probs"]):
        assert kv(html.escape(repr(piece)), f"{p:.3f}") in out
    assert len(row["top_pieces"]) == 5 and out.count('<div class="r') == 4 + len(SCHEMES) + 5
    prompt = view.filter(~pl.col("is_target")).row(0, named=True)
    assert "not trained on" in card(prompt)


def test_token_html_cards_are_focusable_and_escaped():
    view = pl.DataFrame({"position": [0, 1], "token": ["<b>", "x"], "is_target": [False, True],
                         "q": [None, 0.5], "logp": [None, -0.693], "rank": [None, 1],
                         "entropy": [None, 1.0], "top_pieces": [None, ["<i>"]],
                         "top_probs": [None, [0.5]],
                         **{f"w_{s}": [None, 0.25] for s in SCHEMES}})
    out = token_html(view, "weight", "infosft")
    body = out.split("</style>")[1]
    assert "<b>" not in body and "<i>" not in body and "&#x27;&lt;i&gt;&#x27;" in body
    assert body.count('tabindex="0"') == 1 and 'title="' not in body
    assert body.count('class="card" role="tooltip"') == 2
    # the hover card shows on hover and on keyboard focus, by CSS alone
    assert ".tv span.t:focus > .card" in out and ".tv span.t:hover > .card" in out


# ---------------------------------------------------------------- export names

@pytest.mark.parametrize("scheme,knobs,name", [
    ("infosft", {"C": 3.25}, "sample-infosft-C3.25"),
    ("infosft", {"C": 2.5867}, "sample-infosft-C2.5867"),
    ("sft", {}, "sample-sft"), ("dft", {}, "sample-dft"),
    ("profit", {"threshold": 0.1, "direction": "higher", "seed": 0}, "sample-profit-higher-t0.1"),
    ("profit", {"threshold": [0.2, 0.8], "direction": "middle", "seed": 0},
     "sample-profit-middle-0.2-0.8"),
    ("profit", {"threshold": 0.3, "direction": "random", "seed": 7},
     "sample-profit-random-t0.3-seed7"),
])
def test_export_name_carries_scheme_and_knobs(scheme, knobs, name):
    assert export_name("sample", scheme, knobs) == name


# ---------------------------------------------------------------- the pages

def test_export_from_the_sidebar_shows_the_knobs_moved_on_tune(workspace):
    at = app_page("views/export.py")  # opened once before, with the first knobs
    ok(at)
    assert at.text_input(key="export_name").value == f"sample-infosft-C{Settings().C:g}"
    at.switch_page("views/tune.py").run()
    at.slider(key="tune_C").set_value(3.25).run()
    at.switch_page("views/export.py").run()  # the sidebar link, not Tune's button
    ok(at)
    assert at.slider(key="export_C").value == pytest.approx(3.25)
    assert at.subheader[0].value == "InfoSFT (C=3.25)"
    assert at.text_input(key="export_name").value == "sample-infosft-C3.25"
    at.button(key="export_go").click().run()
    ok(at)
    first = workspace / "exports" / "sample-infosft-C3.25.parquet"
    assert read_export_meta(first)["knobs"]["C"] == pytest.approx(3.25)
    # a change on Export is the session's change: Tune and the sidebar follow
    at.slider(key="export_C").set_value(1.5).run()
    assert at.session_state["settings"].C == pytest.approx(1.5)
    assert at.text_input(key="export_name").value == "sample-infosft-C1.5"
    at.button(key="export_go").click().run()
    ok(at)
    assert read_export_meta(workspace / "exports" / "sample-infosft-C1.5.parquet")[
        "knobs"]["C"] == pytest.approx(1.5)
    assert read_export_meta(first)["knobs"]["C"] == pytest.approx(3.25)  # not overwritten
    at.switch_page("views/tune.py").run()
    assert at.slider(key="tune_C").value == pytest.approx(1.5)


def test_export_keeps_a_name_the_user_typed():
    at = app_page("views/export.py")
    at.text_input(key="export_name").set_value("mine").run()
    at.slider(key="export_C").set_value(2.0).run()
    assert at.text_input(key="export_name").value == "mine"


def test_existing_file_names_the_overwrite_checkbox(workspace):
    at = app_page("views/export.py")
    at.button(key="export_go").click().run()
    ok(at)
    at.button(key="export_go").click().run()
    assert not at.exception and at.error
    msg = at.error[0].value
    assert "already exists" in msg and "Overwrite an existing file" in msg
    assert "--overwrite" not in msg
    at.checkbox(key="export_overwrite").check().run()
    at.button(key="export_go").click().run()
    ok(at)
    assert at.success


def test_token_view_page_scale_control(view):
    at = app_page("views/token_view.py")
    ok(at)
    at.radio(key="tv_color").set_value("weight").run()
    html = [h.proto.body for h in at.get("html")]
    top = view["w_infosft"].max()
    assert f"w = {top:.3g} (InfoSFT&#x27;s max in this example)" in html[0] or \
        f"w = {top:.3g} (InfoSFT's max in this example)" in html[0]
    assert BLUE in html[1]
    at.radio(key="tv_scale").set_value("fixed 0..1").run()
    ok(at)
    html = [h.proto.body for h in at.get("html")]
    assert "w = 1 (fixed scale)" in html[0]
    # InfoSFT's strongest token is no longer full blue on the fixed scale
    pos = view.filter(pl.col("w_infosft") == top)["position"][0]
    assert dict(spans(html[1]))[str(pos)] == expected_blue(top)
