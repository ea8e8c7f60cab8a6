"""Breakdowns by a record column (issue 18, part 3): per group the q distribution and,
per scheme, mean weight, effective tokens, weight share and weight per q band, checked
against numpy computations from the raw records and token rows; ``infosft stats --by``;
the Overview and Tune sections."""

from __future__ import annotations

import doctest
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from infosft.analysis import breakdown as bd
from infosft.analysis.stats import weights as run_weights
from infosft.analysis.store import Run
from infosft.analysis.tune import Settings
from infosft.errors import InfosftError
from tests.helpers import CODE_ROWS, MATH_ROWS, SAMPLE_RUN, app_page, cli, error_line, \
    forbid_token_load, reference_weights
from tests.helpers import SAMPLE_SCHEMES as SCHEMES  # the schemes the sample run supports

KNOBS = {"sft": {}, "dft": {}, "infosft": {"C": 2.0}, "profit": {"threshold": 0.1},
         "eaft": {}}


@pytest.fixture(scope="module")
def sample_tokens() -> pl.DataFrame:
    """The sample run's target tokens with each one's task, joined in the test from the
    raw record JSON (not through analysis.breakdown)."""
    run = Run(SAMPLE_RUN)
    ex = run.read_examples()
    task = pl.DataFrame({"example_id": ex["example_id"],
                         "task": [json.loads(r).get("task") for r in ex["record"]]})
    tokens = run.scan_tokens().filter(pl.col("is_target")).select(
        "example_id", "position", "logp", "entropy_top20").collect().sort("example_id",
                                                                           "position")
    return tokens.join(task, on="example_id", how="left")


def _mixture_run(tmp_path: Path, source) -> Path:
    """A copy of the sample run whose records get a ``source`` field: ``source(i)`` for
    example i (None: the key is left out), an int ``n`` with 200 values and a float."""
    path = tmp_path / "run"
    shutil.copytree(SAMPLE_RUN, path)
    run = Run(path)
    ex = run.read_examples()
    records = []
    for i, text in zip(ex["example_id"].to_list(), ex["record"].to_list()):
        rec = json.loads(text)
        value = source(i)
        if value is not None:
            rec["source"] = value
        rec["n"], rec["score"] = i, i / 7
        records.append(json.dumps(rec))
    ex.with_columns(pl.Series("record", records)).write_parquet(run.examples_path)
    return path


# ------------------------------------------------------------------ the numbers

def test_doctests():
    assert doctest.testmod(bd).failed == 0


def test_groups_and_counts_of_the_sample_run():
    table = bd.breakdown(SAMPLE_RUN, "task", **KNOBS["infosft"])
    meta = Run(SAMPLE_RUN).meta()
    assert table.columns == list(bd.SCHEMA)
    assert table["scheme"].unique(maintain_order=True).to_list() == list(SCHEMES)
    for scheme in SCHEMES:
        part = table.filter(pl.col("scheme") == scheme)
        # groups by target tokens: math has most
        assert part["group"].to_list() == ["math", "code"]
        assert part["examples"].to_list() == [len(MATH_ROWS), len(CODE_ROWS)]
        assert part["target_tokens"].sum() == meta["counts"]["target_tokens"]
        assert part["examples"].sum() == meta["counts"]["examples"]
        assert part["token_share"].sum() == pytest.approx(1.0)
        assert part["weight_share"].sum() == pytest.approx(1.0)
    sft = table.filter(pl.col("scheme") == "sft")
    assert sft["weight_share"].to_list() == pytest.approx(sft["token_share"].to_list())
    assert sft["emphasis"].to_list() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_per_group_numbers_match_numpy(sample_tokens, scheme):
    table = bd.breakdown(SAMPLE_RUN, "task", scheme, **KNOBS[scheme])
    assert table["scheme"].to_list() == [scheme, scheme]
    all_w = reference_weights(sample_tokens["logp"].to_numpy(), scheme, C=2.0, tau=0.1,
                              entropy_top20=sample_tokens["entropy_top20"].to_numpy())
    for row in table.iter_rows(named=True):
        mask = (sample_tokens["task"] == row["group"]).to_numpy()
        logp = sample_tokens["logp"].to_numpy()[mask]
        q, w = np.exp(logp.astype(np.float64)), all_w[mask]
        assert row["target_tokens"] == mask.sum()
        assert row["token_share"] == pytest.approx(mask.mean())
        assert row["mean_q"] == pytest.approx(q.mean(), rel=1e-6)
        for p in (10, 50, 90):
            assert row[f"q_p{p}"] == pytest.approx(np.quantile(q, p / 100), rel=1e-5)
        assert row["mean_weight"] == pytest.approx(w.mean(), rel=1e-5)
        assert row["share_nonzero"] == pytest.approx((w > 0).mean(), abs=1e-9)
        assert row["effective_tokens"] == pytest.approx(w.sum() ** 2 / (w ** 2).sum(),
                                                        rel=1e-5)
        assert row["effective_share"] == pytest.approx(row["effective_tokens"] / mask.sum())
        assert row["weight_share"] == pytest.approx(w.sum() / all_w.sum(), rel=1e-5)
        assert row["emphasis"] == pytest.approx((w.sum() / all_w.sum()) / mask.mean(),
                                                rel=1e-5)
        for band, lo, hi in (("low", 0, 0.1), ("medium", 0.1, 0.9), ("high", 0.9, 1.01)):
            in_band = (q >= lo) & (q < hi)
            assert row[f"weight_share_{band}"] == pytest.approx(w[in_band].sum() / w.sum(),
                                                                abs=1e-6)


def test_infosft_leans_on_math_in_the_sample():
    """The sample's code targets are surer (median q 0.90 vs 0.79), so InfoSFT, which
    gives q >= P no weight, gives code less than its share and math more."""
    part = bd.breakdown(SAMPLE_RUN, "task", "infosft", P=0.93)
    emph = dict(zip(part["group"], part["emphasis"]))
    assert emph["math"] > 1 > emph["code"]


def test_random_profit_splits_the_runs_own_weights(sample_tokens):
    """ProFit's random drops are drawn once over the run, so the groups' weights add up
    to the run's (a draw per group would not)."""
    knobs = {"threshold": 0.4, "direction": "random", "seed": 3}
    w = run_weights(sample_tokens["logp"], "profit", **knobs)
    table = bd.breakdown(SAMPLE_RUN, "task", "profit", **knobs)
    for row in table.iter_rows(named=True):
        mask = (sample_tokens["task"] == row["group"]).to_numpy()
        assert row["mean_weight"] == pytest.approx(w[mask].mean())


def test_knobs_of_other_schemes_are_ignored_and_bad_knobs_fail():
    both = bd.breakdown(SAMPLE_RUN, "task", C=1.5, threshold=0.3)
    alone = bd.breakdown(SAMPLE_RUN, "task", "infosft", C=1.5)
    assert both.filter(pl.col("scheme") == "infosft")["mean_weight"].to_list() == \
        alone["mean_weight"].to_list()
    assert both.filter(pl.col("scheme") == "profit")["mean_weight"].to_list() != \
        bd.breakdown(SAMPLE_RUN, "task", "profit")["mean_weight"].to_list()
    with pytest.raises(ValueError, match="C must be"):
        bd.breakdown(SAMPLE_RUN, "task", "infosft", C=-1.0)


# ------------------------------------------------------------------ labels, groups, errors

def test_missing_column_is_one_line_naming_run_and_columns():
    with pytest.raises(InfosftError) as e:
        bd.group_labels(SAMPLE_RUN, "source")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(SAMPLE_RUN) in msg and "'source'" in msg
    assert msg.endswith("prompt, response, task")
    with pytest.raises(InfosftError, match="'source'"):
        bd.breakdown(SAMPLE_RUN, "source")


def test_missing_keys_become_none_and_many_groups_are_pooled(tmp_path):
    # 30 sources; every 7th record has none; source 0..29 by example id
    path = _mixture_run(tmp_path, lambda i: None if i % 7 == 0 else f"s{i % 30:02d}")
    labels = bd.group_labels(path, "source")
    ids = labels["example_id"].to_list()
    assert labels["group"].to_list() == ["(none)" if i % 7 == 0 else f"s{i % 30:02d}"
                                         for i in ids]
    run = Run(path)
    tokens = run.scan_tokens().filter(pl.col("is_target")).group_by("example_id").len().collect()
    per_label = (tokens.join(labels, on="example_id").group_by("group").agg(pl.col("len").sum())
                 .sort(["len", "group"], descending=[True, False]))
    table = bd.breakdown(path, "source", "dft", max_groups=5)
    top = per_label["group"].to_list()[:5]
    assert table["group"].to_list() == top + ["(other)"]
    assert table["target_tokens"].to_list()[:5] == per_label["len"].to_list()[:5]
    assert table["target_tokens"].sum() == run.meta()["counts"]["target_tokens"]
    assert table["examples"].sum() == run.meta()["counts"]["examples"]
    assert table["weight_share"].sum() == pytest.approx(1.0)
    g = bd.grouping(path, "source", max_groups=5)
    assert g.capped and g.n_groups == 31
    assert g.note == "The 5 groups with the most target tokens; the other 26 pooled as (other)."
    assert len(bd.grouping(path, "source").names) == 21  # 20 by default, and (other)
    assert len(bd.grouping(path, "source", max_groups=40).names) == 31


def test_synthetic_runs_carry_an_uneven_mixture_of_sources(tmp_path):
    from collections import Counter

    from infosft.analysis.synthetic import make_run

    run = make_run(tmp_path / "r", n_examples=44, prompt_tokens=2, target_tokens=5,
                   sources=("web", "code", "math"))
    labels = bd.group_labels(run.path, "source")
    counts = dict(Counter(labels["group"].to_list()))
    # i * 7 % 11 % 3 over 0..43: residues 0..10 of 7i mod 11 four times each
    assert counts == {"web": 16, "code": 16, "math": 12}
    assert bd.run_columns(run.path)[0] == "source"  # a default breakdown column


def test_integer_labels_and_groupable_columns(tmp_path):
    path = _mixture_run(tmp_path, lambda i: i % 3)
    assert set(bd.group_labels(path, "source")["group"]) == {"0", "1", "2"}
    cols = bd.record_columns(Run(path).read_examples())
    kinds = dict(zip(cols["column"], cols["kind"]))
    assert kinds == {"prompt": "string", "response": "string", "task": "string",
                     "source": "int", "n": "int", "score": "float"}
    # task first (a default), then source; free text, ids and floats are no breakdown
    assert bd.groupable_columns(Run(path).read_examples()) == ["task", "source"]
    assert bd.run_columns(path) == ["task", "source"]
    assert bd.run_columns(SAMPLE_RUN) == ["task"]


# ------------------------------------------------------------------ the CLI

def test_cli_stats_by_task(capsys):
    rc, out, err = cli(capsys, "stats", SAMPLE_RUN, "--by", "task", "--scheme", "infosft",
                       "--C", "2")
    assert rc == 0, err
    table = bd.breakdown(SAMPLE_RUN, "task", C=2.0)
    lines = out.splitlines()
    assert lines[1].split() == ["by", "task:", "2", "groups"]
    assert "infosft (C=2, P=0.8808)" in lines[2]
    header = next(i for i, line in enumerate(lines) if line.startswith("group  examples"))
    rows = {line.split()[0]: line.split() for line in lines[header + 1:header + 3]}
    chosen = table.filter(pl.col("scheme") == "infosft")
    for r in chosen.iter_rows(named=True):
        cells = rows[r["group"]]
        assert cells[1:3] == [str(r["examples"]), str(r["target_tokens"])]
        assert cells[8] == f"{r['mean_weight']:.3f}"
        assert cells[10] == f"{r['effective_tokens']:.0f}"
        assert cells[11] == f"{r['weight_share']:.1%}"
    # the per-scheme weight shares, one line per group
    share = {line.split()[0]: line.split()[1:] for line in lines[-2:]}
    for g in ("math", "code"):
        want = [f"{table.filter((pl.col('group') == g) & (pl.col('scheme') == s))['weight_share'][0]:.1%}"
                for s in SCHEMES]
        assert share[g][1:] == want


def test_cli_stats_by_json_and_errors(capsys, tmp_path):
    rc, out, _ = cli(capsys, "stats", SAMPLE_RUN, "--by", "task", "--scheme", "dft", "--json")
    assert rc == 0
    rep = json.loads(out)
    assert rep["column"] == "task" and rep["scheme"] == "dft" and rep["groups"] == 2
    assert rep["rows"] == bd.breakdown(SAMPLE_RUN, "task").to_dicts()
    rc, _, err = cli(capsys, "stats", SAMPLE_RUN, "--by", "source")
    assert rc == 2
    line = error_line(err)
    assert "'source'" in line and "prompt, response, task" in line
    path = _mixture_run(tmp_path, lambda i: f"s{i % 30:02d}")
    rc, out, _ = cli(capsys, "stats", path, "--by", "source", "--max-groups", "3")
    assert rc == 0
    assert "30 groups; the top 3 by target tokens, the other 27 pooled as (other)" in out
    assert "(other)" in out.splitlines()[-1]
    rc, _, err = cli(capsys, "stats", path, "--by", "source", "--max-groups", "0")
    assert rc == 2 and "--max-groups" in error_line(err)


# ------------------------------------------------------------------ the app

@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(ws))
    return ws


def _bars(at) -> dict[str, dict]:
    """The breakdown chart's bars: trace name -> {group: share}."""
    [chart] = [c for c in at.get("plotly_chart") if "emphasizes" in c.proto.spec]
    return {t["name"]: dict(zip(t["x"], t["y"])) for t in json.loads(chart.proto.spec)["data"]}


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_overview_section_shows_every_schemes_share_per_task(workspace):
    pytest.importorskip("streamlit")
    at = app_page("views/overview.py")
    _ok(at)
    assert at.selectbox(key="ov_by").value == "task"
    assert at.selectbox(key="ov_by").options == ["task"]
    table = bd.breakdown(SAMPLE_RUN, "task", C=at.session_state["settings"].C)
    bars = _bars(at)
    assert bars["target tokens"] == pytest.approx(
        dict(zip(table["group"][:2], table["token_share"][:2])))
    infosft = table.filter(pl.col("scheme") == "infosft")
    name = next(n for n in bars if n.startswith("weight InfoSFT"))
    assert bars[name] == pytest.approx(dict(zip(infosft["group"], infosft["weight_share"])))
    assert len(bars) == 5  # tokens, DFT, InfoSFT, ProFit, EAFT (SFT's share is the tokens')
    shown = next(d.value for d in at.dataframe if "Group" in d.value.columns)
    assert shown["Group"].tolist() == ["math", "code"]
    assert shown["Target tokens"].sum() == Run(SAMPLE_RUN).meta()["counts"]["target_tokens"]


def test_overview_section_of_a_large_run_comes_from_its_cells(workspace, monkeypatch):
    """Above BINNED_ABOVE the section is drawn from the run's cells, no token loaded:
    each scheme's share per task within half a point of the exact one."""
    pytest.importorskip("streamlit")
    from infosft.app import state

    table = bd.breakdown(SAMPLE_RUN, "task", C=2.0)
    monkeypatch.setattr(state, "BINNED_ABOVE", 0)

    forbid_token_load(monkeypatch)
    at = app_page("views/overview.py", settings=Settings(C=2.0))
    _ok(at)
    assert any(c.value == state.BINNED_NOTE for c in at.caption)
    bars = _bars(at)
    assert len(bars) == 5
    for scheme, label in (("infosft", "InfoSFT"), ("eaft", "EAFT")):
        want = table.filter(pl.col("scheme") == scheme)
        name = next(n for n in bars if n.startswith(f"weight {label}"))
        assert bars[name] == pytest.approx(dict(zip(want["group"], want["weight_share"])),
                                           abs=5e-3)


def test_tune_section_follows_the_knobs(workspace):
    pytest.importorskip("streamlit")
    at = app_page("views/tune.py")
    _ok(at)
    assert at.selectbox(key="tune_by").value == "task"
    at.slider(key="tune_C").set_value(1.5).run()
    _ok(at)
    want = bd.breakdown(SAMPLE_RUN, "task", "infosft", C=1.5)
    shown = next(d.value for d in at.dataframe if "Emphasis" in d.value.columns)
    assert shown["Group"].tolist() == ["math", "code"]
    assert shown["Mean weight"].tolist() == pytest.approx(want["mean_weight"].round(4).to_list())
    assert shown["Weight (%)"].tolist() == pytest.approx(
        (want["weight_share"] * 100).round(1).to_list())
    bars = _bars(at)
    assert set(bars) == {"target tokens", "weight InfoSFT (C=1.5)"}
    assert bars["weight InfoSFT (C=1.5)"] == pytest.approx(
        dict(zip(want["group"], want["weight_share"])))


def test_sections_hide_without_a_groupable_column(workspace, tmp_path):
    pytest.importorskip("streamlit")
    path = tmp_path / "run"
    shutil.copytree(SAMPLE_RUN, path)
    run = Run(path)
    ex = run.read_examples()
    ex.with_columns(pl.Series("record", [json.dumps({k: v for k, v in json.loads(r).items()
                                                     if k != "task"})
                                         for r in ex["record"]])).write_parquet(
        run.examples_path)
    for page, key in (("views/overview.py", "ov_by"), ("views/tune.py", "tune_by")):
        at = app_page(page, run_path=str(path))
        _ok(at)
        assert not [s for s in at.selectbox if s.key == key]
        assert not any("emphasizes" in c.proto.spec for c in at.get("plotly_chart"))
        assert any("splits it into 2 to 50 groups" in c.value for c in at.caption)


def test_readme_example_is_what_the_cli_prints(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    cmd = "$ infosft stats sample_data/runs/sample --by task --scheme infosft --C 2.0"
    block = readme.split(cmd, 1)[1].split("```", 1)[0]
    shown = [line.strip() for line in block.strip().splitlines()]
    rc, out, _ = cli(capsys, "stats", SAMPLE_RUN, "--by", "task", "--scheme", "infosft",
                     "--C", "2.0")
    assert rc == 0
    lines = [line.strip() for line in out.splitlines()]
    start = lines.index(shown[0])
    assert lines[start:start + len(shown)] == shown


@pytest.mark.parametrize("max_groups", [20, 2])
def test_a_large_runs_breakdown_comes_from_its_cells(tmp_path, max_groups):
    """A binned run (Overview and Tune above BINNED_ABOVE) is broken down from each
    group's counts in the run's cells: the same groups, examples and tokens, and every
    scheme's numbers (EAFT and excess too) close to the per-token ones."""
    from infosft.analysis.stats import Targets
    from infosft.analysis.synthetic import make_run

    run = make_run(tmp_path / "run", n_examples=300, target_tokens=60, seed=9,
                   part_examples=100, fields=("entropy_top20", "logp_ref"))
    ex = run.read_examples()
    src = ["web", "code", "math", "chat"]
    records = [json.dumps({"source": src[i * 7 % 4 if i % 5 else 2]} if i % 11 else {})
               for i in ex["example_id"].to_list()]
    ex.with_columns(pl.Series("record", records)).write_parquet(run.examples_path)
    labels = bd.group_labels(run, "source")
    exact, binned = Targets.from_run(run.path), Targets.binned(run.path)
    a = bd.Grouping.build(exact, labels, "source", max_groups=max_groups)
    b = bd.Grouping.build_binned(run, binned, labels, "source", max_groups=max_groups)
    # ranked by the examples table's n_target, as the app does, instead of a token pass
    b2 = bd.Grouping.build_binned(run, binned, labels, "source", max_groups=max_groups,
                                  examples=run.read_examples())
    assert (b2.names, b2.examples.tolist()) == (b.names, b.examples.tolist())
    assert b2.facts.equals(b.facts)
    assert (b.names, b.capped, b.n_groups) == (a.names, a.capped, a.n_groups) \
        and b.examples.tolist() == a.examples.tolist()
    assert a.names[0] == "math" and len(a.names) == (5 if max_groups == 20 else 3)
    schemes = {"sft": {}, "dft": {}, "infosft": {"C": 2.0}, "profit": {"threshold": 0.5},
               "eaft": {"alpha": 0.5}, "excess": {"keep": 0.4}}
    ta, tb = a.table(exact, schemes), b.table(binned, schemes)
    for col in ("group", "scheme", "examples", "target_tokens", "token_share"):
        assert tb[col].to_list() == ta[col].to_list(), col
    for col in ("mean_q", "q_p10", "q_p50", "q_p90"):
        np.testing.assert_allclose(tb[col].to_numpy(), ta[col].to_numpy(), atol=3e-3)
    for col in ("mean_weight", "share_nonzero", "effective_share", "weight_share",
                "weight_share_low", "weight_share_medium", "weight_share_high"):
        np.testing.assert_allclose(tb[col].to_numpy(), ta[col].to_numpy(), atol=0.01,
                                   err_msg=col)
    np.testing.assert_allclose(tb["emphasis"].to_numpy(), ta["emphasis"].to_numpy(),
                               rtol=0.03)
    # through the cached entry point the app calls, and a bounded size
    again = bd.grouping(run, "source", targets=binned)
    assert again.names == bd.grouping(run, "source", targets=exact).names
    assert sum(len(p.logp) for p in b.parts) <= len(b.names) * len(binned.logp)


def test_a_grouping_asked_for_by_several_threads_is_built_once(monkeypatch):
    """A slider moved while a large run's grouping is built starts a second script run:
    it waits for the first build rather than starting its own (each held ~0.5 GB)."""
    import threading

    built, started, release = [], threading.Event(), threading.Event()
    real = bd.Grouping.build

    def slow_build(*a, **k):
        built.append(1)
        started.set()
        release.wait(10)
        return real(*a, **k)

    monkeypatch.setattr(bd.Grouping, "build", staticmethod(slow_build))
    monkeypatch.setattr(bd, "_cache", {})
    out = []
    threads = [threading.Thread(target=lambda: out.append(bd.grouping(SAMPLE_RUN, "task")))
               for _ in range(3)]
    threads[0].start()
    assert started.wait(10)
    for t in threads[1:]:
        t.start()
    release.set()
    for t in threads:
        t.join(30)
    assert len(built) == 1 and len(out) == 3 and out[0] is out[1] is out[2]
