"""The analysis and the app driven by the scheme registry: EAFT and excess (Rho-1) on a
synthetic run with their per-token fields, against independent numpy formulas; which
schemes a run supports (fields present, binned); export of the new schemes; the
one-line error on a run without the fields; and the app's scheme box, declared knob
widgets and a user's ``module:function`` scheme under Streamlit's AppTest."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from infosft.analysis.export import export_weighted, read_export_meta
from infosft.analysis.stats import Targets, run_summary
from infosft.analysis.store import Run
from infosft.analysis.synthetic import make_run
from infosft.analysis.tune import Settings, tune_view, weight_curves
from infosft.analysis.view import token_view
from infosft.errors import InfosftError
from infosft.weights import Q_SCHEMES, SCHEMES

from tests.helpers import SAMPLE_RUN, app_page, cli

SMALL = dict(n_examples=24, prompt_tokens=4, target_tokens=40, part_examples=10)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """A synthetic run with both optional fields."""
    return make_run(tmp_path_factory.mktemp("fields") / "run", seed=3,
                    fields=("entropy_top20", "logp_ref"), **SMALL)


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Run:
    """The same layout without the optional fields (an old run)."""
    return make_run(tmp_path_factory.mktemp("bare") / "run", seed=3, **SMALL)


@pytest.fixture(scope="module")
def tokens(run) -> pl.DataFrame:
    """The run's target tokens read straight from its parts, in run order."""
    df = pl.concat([pl.read_parquet(p) for p in sorted(run.tokens_dir.glob("part-*.parquet"))])
    return df.filter(pl.col("is_target")).sort("example_id", "position")


@pytest.fixture(scope="module")
def targets(run) -> Targets:
    return Targets.from_run(run)


def eaft_numpy(entropy: np.ndarray, alpha: float) -> np.ndarray:
    return (np.clip(entropy.astype(np.float64), 0, None) / 3.0) ** alpha


def excess_numpy(logp: np.ndarray, ref: np.ndarray, keep: float,
                 group: np.ndarray | None = None) -> np.ndarray:
    """1 for the ceil(keep * n) tokens of each group with the largest ref - logp (ties:
    the earlier token), else 0."""
    excess = ref.astype(np.float64) - logp.astype(np.float64)
    group = np.zeros(len(excess), dtype=np.int64) if group is None else group
    w = np.zeros(len(excess))
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        order = idx[np.argsort(-excess[idx], kind="stable")]
        w[order[:math.ceil(keep * len(idx) - 1e-9)]] = 1.0
    return w


# ---------------------------------------------------------------- the weights

def test_synthetic_fields_are_plausible(tokens, run):
    assert run.token_fields() == ("entropy_top20", "logp_ref")
    ent, ref = tokens["entropy_top20"].to_numpy(), tokens["logp_ref"].to_numpy()
    assert tokens["entropy_top20"].null_count() == 0 and tokens["logp_ref"].null_count() == 0
    assert ent.min() >= 0 and ent.max() <= math.log(20) + 1e-6 and ent.std() > 0.1
    assert ref.max() <= 0 and np.abs(ref - tokens["logp"].to_numpy()).mean() < 1.0
    everything = pl.read_parquet(sorted(run.tokens_dir.glob("part-*.parquet"))[0])
    prompt = everything.filter(~pl.col("is_target"))
    assert prompt["entropy_top20"].null_count() == prompt.height  # null on non-targets


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_eaft_weights_match_numpy(targets, tokens, alpha):
    want = eaft_numpy(tokens["entropy_top20"].to_numpy(), alpha)
    np.testing.assert_allclose(targets.weights("eaft", alpha=alpha), want, rtol=1e-5, atol=1e-7)
    s = targets.summary("eaft", alpha=alpha)
    assert s["knobs"] == {"alpha": alpha}
    assert s["mean_weight"] == pytest.approx(want.mean(), rel=1e-5)
    assert s["effective_tokens"] == pytest.approx(want.sum() ** 2 / (want ** 2).sum(), rel=1e-4)


@pytest.mark.parametrize("keep,per", [(0.6, "all"), (0.25, "all"), (0.3, "example")])
def test_excess_weights_match_numpy(targets, tokens, keep, per):
    group = tokens["example_id"].to_numpy() if per == "example" else None
    want = excess_numpy(tokens["logp"].to_numpy(), tokens["logp_ref"].to_numpy(), keep, group)
    got = targets.weights("excess", keep=keep, per=per)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    s = targets.summary("excess", keep=keep, per=per)
    assert s["share_nonzero"] == pytest.approx(want.mean())
    q = np.exp(tokens["logp"].to_numpy().astype(np.float64))
    assert s["weight_share_high"] == pytest.approx(want[q >= 0.9].sum() / want.sum())


def test_schemes_a_run_supports(run, bare, targets):
    assert targets.schemes() == list(SCHEMES)
    assert Targets.from_run(bare).schemes() == list(Q_SCHEMES)
    binned = Targets.binned(run)  # a histogram of the fields: the same schemes
    assert binned.schemes() == list(SCHEMES)
    # a selection within each example too: on the run's rank cells
    per_example = {"excess": {"per": "example"}}
    assert binned.schemes(knobs=lambda s: per_example.get(s, {})) == list(SCHEMES)
    assert targets.schemes(knobs=lambda s: per_example.get(s, {})) == list(SCHEMES)
    only_entropy = Targets(targets.example_id, targets.logp,
                           fields={"entropy_top20": targets.fields["entropy_top20"]})
    assert only_entropy.schemes() == [*Q_SCHEMES, "eaft"]
    # the bundled run is scored with entropy_top20, without a reference
    assert Targets.from_run(SAMPLE_RUN).schemes() == [*Q_SCHEMES, "eaft"]


@pytest.mark.parametrize("scheme,field,advice", [("eaft", "entropy_top20", "rescore"),
                                                 ("excess", "logp_ref", "--reference")])
def test_missing_field_is_one_line_naming_it(bare, scheme, field, advice):
    t = Targets.from_run(bare)
    with pytest.raises(InfosftError) as e:
        t.weights(scheme)
    msg = str(e.value)
    assert "\n" not in msg and field in msg and advice in msg
    short = t.missing(scheme, short=True)
    assert short.startswith(("EAFT needs entropy_top20: rescore the run",
                             "Excess loss (Rho-1) needs logp_ref"))
    with pytest.raises(InfosftError, match=field):
        run_summary(bare.path, scheme)


def test_binned_run_weighs_a_selection_within_each_example_on_its_rank_cells(run, tokens):
    """Excess per=example on a binned run: the rank cells' weights (a share of each
    cell), whose total is exactly the ceil(keep * m) kept per example of excess_numpy."""
    binned = Targets.binned(run)
    assert binned.missing("excess", knobs={"per": "example"}) is None
    ranks = binned.over("excess", {"per": "example"})
    assert ranks is binned.over("excess", {"per": "example", "keep": 0.2})  # built once
    assert ranks.grid.ranked
    # each scheme on the cells of the fields it reads: q alone is the run's own
    assert binned.over("infosft") is binned and binned.grid.fields == ()
    assert binned.over("eaft").grid.fields == ("entropy_top20",)
    assert binned.over("excess", {"per": "all"}).grid.fields == ("logp_ref",)
    w = binned.weights("excess", per="example", keep=0.3)
    assert w.shape == ranks.logp.shape
    want = excess_numpy(tokens["logp"].to_numpy(), tokens["logp_ref"].to_numpy(), 0.3,
                        tokens["example_id"].to_numpy()).sum()
    assert ranks.mass(w) == pytest.approx(want, abs=1e-6)
    # the rank cells weigh nothing else
    assert "do not carry" in ranks.missing("infosft")
    with pytest.raises(InfosftError, match="do not carry"):
        ranks.weights("excess", per="all")


def test_run_summary_of_eaft(run, tokens):
    s = run_summary(run.path, "eaft", alpha=0.5)["scheme"]
    want = eaft_numpy(tokens["entropy_top20"].to_numpy(), 0.5)
    assert s["mean_weight"] == pytest.approx(want.mean(), rel=1e-5)


# ---------------------------------------------------------------- settings and views

def test_settings_hold_every_schemes_knobs():
    s = Settings()
    assert s.knobs("eaft") == {"alpha": 1.0}
    assert s.knobs("excess") == {"keep": 0.6, "per": "all"}
    s2 = s.with_knob("eaft", "alpha", 2.5).with_knob("excess", "per", "example")
    assert s2.knobs("eaft") == {"alpha": 2.5}
    assert s2.knobs("excess") == {"keep": 0.6, "per": "example"}
    assert s2.with_knob("eaft", "alpha", 3.0).knobs("eaft") == {"alpha": 3.0}
    assert s2.with_knob("infosft", "C", 1.5).C == 1.5  # the fixed fields stay as they were
    assert s2.with_knob("profit", "direction", "lower").knobs("profit")["direction"] == "lower"
    assert s == Settings() and hash(s2)  # frozen, hashable
    with pytest.raises(ValueError, match="no knob"):
        s.with_knob("eaft", "beta", 1.0)
    assert list(weight_curves(s).columns) == ["q", *Q_SCHEMES]


def test_tune_view_lists_the_schemes_the_run_supports(targets, bare):
    s = Settings(scheme="eaft").with_knob("eaft", "alpha", 2.0)
    view = tune_view(targets, s)
    assert view["schemes"]["scheme"].to_list() == list(SCHEMES)
    assert list(view["curves"].columns) == ["q", *Q_SCHEMES]
    assert view["summary"]["knobs"] == {"alpha": 2.0}
    assert {"eaft", "excess"} <= set(view["hist"].columns)
    old = tune_view(Targets.from_run(bare), s)
    assert old["summary"] is None and old["schemes"]["scheme"].to_list() == list(Q_SCHEMES)


def test_token_view_has_the_new_schemes(run, targets, tokens):
    s = Settings().with_knob("excess", "keep", 0.3)
    view = token_view(run, 2, targets, run.read_vocab(), s)
    assert [c for c in view.columns if c.startswith("w_")] == [f"w_{x}" for x in SCHEMES]
    tgt = view.filter(pl.col("is_target"))
    mine = tokens.filter(pl.col("example_id") == 2)
    np.testing.assert_allclose(tgt["w_eaft"].to_numpy(),
                               eaft_numpy(mine["entropy_top20"].to_numpy(), 1.0), rtol=1e-5)
    # excess ranks over the whole run: the example's slice of the run's weights
    whole = excess_numpy(tokens["logp"].to_numpy(), tokens["logp_ref"].to_numpy(), 0.3)
    np.testing.assert_array_equal(tgt["w_excess"].to_numpy(),
                                  whole[(tokens["example_id"] == 2).to_numpy()])


def test_breakdown_includes_the_new_schemes(run, bare):
    from infosft.analysis.breakdown import breakdown, breakdown_report, format_breakdown

    table = breakdown(run, "prompt", max_groups=3)
    assert table["scheme"].unique(maintain_order=True).to_list() == list(SCHEMES)
    rep = breakdown_report(run.path, "prompt", "eaft", max_groups=3, alpha=2.0)
    assert rep["knobs"]["eaft"] == {"alpha": 2.0}
    assert "eaft" in format_breakdown(rep)
    with pytest.raises(InfosftError, match="entropy_top20"):
        breakdown_report(bare.path, "task", "eaft")


# ---------------------------------------------------------------- export

def exported_weights(path: Path) -> np.ndarray:
    df = pl.read_parquet(path).sort("example_id")
    labels = np.concatenate(df["labels"].to_list())
    return np.concatenate(df["weights"].to_list())[labels != -100]


def test_export_eaft_records_knobs_and_weights(run, tokens, tmp_path):
    out = export_weighted(run.path, tmp_path / "eaft.parquet", "eaft", alpha=2.0)
    meta = read_export_meta(out)
    assert meta["scheme"] == "eaft" and meta["knobs"] == {"alpha": 2.0}
    np.testing.assert_allclose(exported_weights(out),
                               eaft_numpy(tokens["entropy_top20"].to_numpy(), 2.0),
                               rtol=1e-5, atol=1e-7)


def test_export_excess_matches_the_run_ranking(run, tokens, tmp_path):
    out = export_weighted(run.path, tmp_path / "x.parquet", "excess", keep=0.4, per="example")
    assert read_export_meta(out)["knobs"] == {"keep": 0.4, "per": "example"}
    want = excess_numpy(tokens["logp"].to_numpy(), tokens["logp_ref"].to_numpy(), 0.4,
                        tokens["example_id"].to_numpy())
    np.testing.assert_array_equal(exported_weights(out), want.astype(np.float32))


def test_export_without_the_field_is_one_line(bare, tmp_path, capsys):
    with pytest.raises(InfosftError) as e:
        export_weighted(bare.path, tmp_path / "e.parquet", "eaft")
    assert "\n" not in str(e.value) and "entropy_top20" in str(e.value)
    assert not (tmp_path / "e.parquet").exists()
    rc, out, err = cli(capsys, "export", bare.path, "--out", tmp_path / "e.parquet",
                       "--scheme", "eaft")
    assert rc != 0 and "entropy_top20" in err and "rescore" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- the app

@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(ws))
    return ws


def ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_app_offers_eaft_and_its_alpha_moves_the_summary(run, targets, workspace):
    from infosft.app.render import summary_cards

    at = app_page("views/tune.py", run_path=str(run.path))
    ok(at)
    box = at.selectbox(key="tune_scheme")
    assert "EAFT" in box.options and "Excess loss (Rho-1)" in box.options
    box.set_value("eaft").run()
    ok(at)
    assert metrics(at) == dict(summary_cards(targets.summary("eaft", alpha=1.0)))
    at.slider(key="tune_eaft_alpha").set_value(2.0).run()
    ok(at)
    assert metrics(at) == dict(summary_cards(targets.summary("eaft", alpha=2.0)))
    assert at.session_state["settings"].knobs() == {"alpha": 2.0}
    # the side-by-side table has every scheme
    table = next(d.value for d in at.dataframe if "Effective tokens" in d.value.columns)
    assert len(table) == len(SCHEMES) and "EAFT (alpha=2)" in table["Scheme"].to_list()
    # excess' declared knobs: a slider and a select box
    at.selectbox(key="tune_scheme").set_value("excess").run()
    at.selectbox(key="tune_excess_per").set_value("example").run()
    at.slider(key="tune_excess_keep").set_value(0.3).run()
    ok(at)
    assert metrics(at) == dict(summary_cards(targets.summary("excess", keep=0.3,
                                                             per="example")))


def test_app_token_view_and_export_with_eaft(run, workspace):
    s = Settings(scheme="eaft")
    at = app_page("views/token_view.py", run_path=str(run.path), settings=s)
    ok(at)
    assert any(m.label == "Mean w EAFT" for m in at.metric)
    assert "EAFT" in at.selectbox(key="tv_scheme").options
    at.switch_page("views/export.py").run()
    ok(at)
    assert at.text_input(key="export_name").value == "run-eaft-alpha1"
    at.button(key="export_go").click().run()
    ok(at)
    out = Path(at.session_state["export_last"])
    assert read_export_meta(out)["knobs"] == {"alpha": 1.0}


def test_a_run_without_the_fields_does_not_offer_eaft(workspace, bare):
    at = app_page("views/tune.py", run_path=str(bare.path))
    ok(at)
    options = at.selectbox(key="tune_scheme").options
    assert "EAFT" not in options and "InfoSFT" in options
    captions = " ".join(c.value for c in at.caption)
    assert "EAFT needs entropy_top20: rescore the run" in captions
    assert "logp_ref" in captions
    # a scheme chosen on a run that had the fields: the reason, not a traceback
    at = app_page("views/tune.py", run_path=str(bare.path), settings=Settings(scheme="eaft"))
    assert not at.exception
    assert at.error and "entropy_top20" in at.error[0].value


def _module(tmp_path: Path, body: str) -> str:
    name = f"userscheme_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    return name


def test_user_scheme_is_loaded_and_its_knob_drawn(tmp_path, monkeypatch, workspace):
    from infosft.app.render import summary_cards

    name = _module(tmp_path, "def focal(logp, gamma=2.0):\n"
                             "    '''w = (1 - q) ^ gamma'''\n"
                             "    return (1 - logp.exp()) ** gamma\n")
    monkeypatch.chdir(tmp_path)
    at = app_page("views/tune.py")
    at.text_input(key="tune_custom").input(f"{name}:focal").run()
    ok(at)
    spec = f"{name}:focal"
    assert at.session_state["settings"].scheme == spec
    t = Targets.from_run(SAMPLE_RUN)
    q = np.exp(t.logp.astype(np.float64))
    assert metrics(at)["Mean weight"] == f"{((1 - q) ** 2).mean():.4f}"
    at.number_input(key=f"tune_{spec}_gamma").set_value(1.0).run()
    ok(at)
    assert metrics(at) == dict(summary_cards(t.summary(spec, gamma=1.0)))
    table = next(d.value for d in at.dataframe if "Effective tokens" in d.value.columns)
    # the user's scheme beside the built-ins the bundled run supports (EAFT too)
    assert len(table) == len(Q_SCHEMES) + 2


@pytest.mark.parametrize("body,words", [
    ("raise RuntimeError('boom')\n", "boom"),
    ("def focal(logp):\n    return -logp.exp()\n", ">= 0"),
    ("x = 1\n", "no attribute"),
])
def test_broken_user_scheme_shows_an_error(tmp_path, monkeypatch, workspace, body, words):
    name = _module(tmp_path, body)
    monkeypatch.chdir(tmp_path)
    at = app_page("views/tune.py")
    at.text_input(key="tune_custom").input(f"{name}:focal").run()
    assert not at.exception
    assert at.error and words in at.error[0].value and "Traceback" not in at.error[0].value
    assert at.session_state["settings"].scheme == "infosft"  # unchanged
    assert at.metric  # the page still works
