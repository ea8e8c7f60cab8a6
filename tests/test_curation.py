"""Curation (issue 18, part 4): an export of the examples chosen by example-level
statistics (``--where``), checked on the bundled sample run against matches computed
here from its examples table and from token weights recomputed from its token parts."""

from __future__ import annotations

import doctest
import json

import numpy as np
import polars as pl
import pytest
import torch

import infosft.analysis.export as export_mod
from infosft.analysis.export import export_weighted, parse_where, read_export_meta
from infosft.analysis.store import Run
from infosft.errors import InfosftError
from infosft.weights import token_weights

from tests.helpers import SAMPLE_RUN, cli, error_line

IGNORE = -100


@pytest.fixture(scope="module")
def examples() -> pl.DataFrame:
    return pl.read_parquet(SAMPLE_RUN / "examples.parquet")


@pytest.fixture(scope="module")
def targets() -> pl.DataFrame:
    """The run's target tokens, read from its parts here, in (example, position) order:
    the order the export weights them in (ProFit's random draw depends on it)."""
    parts = [pl.read_parquet(p) for p in Run(SAMPLE_RUN).part_paths()]
    return (pl.concat(parts).filter(pl.col("is_target"))
            .select("example_id", "position", "logp").sort("example_id", "position"))


def per_example(targets: pl.DataFrame, scheme: str, **knobs) -> pl.DataFrame:
    """``example_id``, ``weight_mass`` (mean weight), ``zero_weight_share``, computed here."""
    w = token_weights(torch.tensor(targets["logp"].to_numpy().copy()), scheme, **knobs)
    return (targets.with_columns(w=pl.Series(w.numpy().astype(np.float64)))
            .group_by("example_id")
            .agg(weight_mass=pl.col("w").mean(), zero_weight_share=(pl.col("w") == 0).mean()))


def exported_ids(path) -> set[int]:
    df = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)
    return set(df["example_id"].to_list())


def ids(df: pl.DataFrame) -> set[int]:
    return set(df["example_id"].to_list())


def test_doctests():
    assert doctest.testmod(export_mod).failed == 0


# ---------------------------------------------------------------- the parser

@pytest.mark.parametrize("expr,want", [
    ("min_q<0.01", [("min_q", "<", 0.01)]),
    ("  weight_mass <= .05 ", [("weight_mass", "<=", 0.05)]),
    ("truncated==false", [("truncated", "==", False)]),
    ("n_target>=10 AND truncated != TRUE", [("n_target", ">=", 10.0), ("truncated", "!=", True)]),
    ("mean_logp>-1e-1", [("mean_logp", ">", -0.1)]),
])
def test_parse(expr, want):
    assert [tuple(c) for c in parse_where(expr)] == want


@pytest.mark.parametrize("expr,names", [
    ("min_qq<0.01", ["min_qq", "fields are", "weight_mass", "zero_weight_share", "min_q"]),
    ("min_q=0.01", ["min_q=0.01", "< <= > >= == !="]),
    ("min_q<<0.01", ["min_q<<0.01"]),
    ("min_q<abc", ["min_q<abc", "'abc'"]),
    ("min_q<0.01 and", ["min_q<0.01 and"]),
    ("truncated>0", ["truncated", "true/false"]),
    ("min_q==true", ["min_q", "number"]),
    ("__import__('os')<1", ["__import__"]),
    ("", ["empty filter"]),
])
def test_bad_filters_are_one_line_errors_naming_the_field(tmp_path, expr, names):
    out = tmp_path / "x.parquet"
    with pytest.raises(InfosftError) as e:
        export_weighted(SAMPLE_RUN, out, "infosft", where=[expr])
    msg = str(e.value)
    assert "\n" not in msg and repr(expr) in msg
    for n in names:
        assert n in msg
    assert not out.exists() and not out.with_name(out.name + ".meta.json").exists()


# ---------------------------------------------------------------- the export

def test_examples_columns_filter(tmp_path, examples):
    out = tmp_path / "noisy.parquet"
    export_weighted(SAMPLE_RUN, out, "infosft", where=["min_q<1e-4", "truncated==false"])
    want = examples.filter((pl.col("min_q") < 1e-4) & ~pl.col("truncated"))
    assert 0 < want.height < examples.height
    assert exported_ids(out) == ids(want)
    meta = read_export_meta(out)
    assert meta["filter"] == {"where": ["min_q<1e-4", "truncated==false"], "mode": "keep",
                              "matched": want.height, "of": examples.height}
    assert meta["n_examples"] == want.height
    assert meta["n_targets"] == int(want["n_target"].sum())


@pytest.mark.parametrize("scheme,knobs,expr", [
    ("infosft", {"P": 0.93}, "weight_mass<0.13"),
    ("infosft", {"C": 1.0}, "weight_mass<=0.1 and n_target>20"),
    ("infosft", {"C": 1.0}, "zero_weight_share>=0.5"),
    ("profit", {"threshold": 0.5}, "weight_mass<0.55"),
    ("profit", {"threshold": 0.3, "direction": "random", "seed": 3}, "zero_weight_share>0.35"),
])
def test_scheme_fields_filter(tmp_path, examples, targets, scheme, knobs, expr):
    out = tmp_path / "low.jsonl"
    export_weighted(SAMPLE_RUN, out, scheme, where=[expr], **knobs)
    table = examples.join(per_example(targets, scheme, **knobs), on="example_id", how="left")
    want = table.filter(pl.sql_expr(expr.replace("and", "AND")))
    assert 0 < want.height < examples.height
    assert exported_ids(out) == ids(want)
    meta = read_export_meta(out)
    assert meta["filter"]["matched"] == want.height and meta["scheme"] == scheme
    # the subset's rows are the whole export's rows, weights and all: nothing reweighted
    whole = tmp_path / "whole.jsonl"
    export_weighted(SAMPLE_RUN, whole, scheme, **knobs)
    sub = pl.read_ndjson(out).sort("example_id")
    full = pl.read_ndjson(whole).filter(pl.col("example_id").is_in(sub["example_id"].to_list()))
    assert sub.equals(full.sort("example_id"))
    # and the weight mass filtered on is the mean of the weights the rows carry
    mass = dict(zip(*table.select("example_id", "weight_mass").to_dict().values()))
    for row in sub.iter_rows(named=True):
        w = np.array(row["weights"])[np.array(row["labels"]) != IGNORE]
        assert w.mean() == pytest.approx(mass[row["example_id"]], rel=1e-5)


def test_drop_keeps_the_rest(tmp_path, examples, targets):
    out = tmp_path / "kept.parquet"
    export_weighted(SAMPLE_RUN, out, "infosft", where=["weight_mass<0.13"], drop=True)
    per = per_example(targets, "infosft")
    ignored = ids(per.filter(pl.col("weight_mass") < 0.13))
    assert 0 < len(ignored) < examples.height
    assert exported_ids(out) == ids(examples) - ignored
    f = read_export_meta(out)["filter"]
    assert f == {"where": ["weight_mass<0.13"], "mode": "drop", "matched": len(ignored),
                 "of": examples.height}
    with pytest.raises(InfosftError, match="--drop needs a --where"):
        export_weighted(SAMPLE_RUN, tmp_path / "y.parquet", "infosft", drop=True)


def test_empty_result_is_an_error_not_an_empty_file(tmp_path):
    for where, drop in ((["min_q<0"], False), (["example_id>=0"], True)):
        out = tmp_path / "none.parquet"
        with pytest.raises(InfosftError) as e:
            export_weighted(SAMPLE_RUN, out, "sft", where=where, drop=drop)
        assert "\n" not in str(e.value) and "nothing to export" in str(e.value)
        assert not out.exists() and not out.with_name(out.name + ".meta.json").exists()


def test_no_filter_export_is_unchanged(tmp_path, examples):
    plain, everything = tmp_path / "plain.jsonl", tmp_path / "all.jsonl"
    export_weighted(SAMPLE_RUN, plain, "dft")
    export_weighted(SAMPLE_RUN, everything, "dft", where=["example_id>=0"])
    assert plain.read_bytes() == everything.read_bytes()  # the same rows, byte for byte
    meta, all_meta = read_export_meta(plain), read_export_meta(everything)
    assert "filter" not in meta
    assert all_meta["filter"]["matched"] == all_meta["filter"]["of"] == examples.height
    assert meta["n_targets"] == all_meta["n_targets"]


# ---------------------------------------------------------------- the CLI

def test_cli_round_trip(tmp_path, capsys, examples, targets):
    out = tmp_path / "cli.parquet"
    rc, stdout, _ = cli(capsys, "export", SAMPLE_RUN, "--out", out, "--scheme", "infosft",
                        "--C", "1.0", "--where", "zero_weight_share>=0.5",
                        "--where", "min_q<1e-4")
    assert rc == 0
    per = per_example(targets, "infosft", C=1.0)
    want = examples.join(per, on="example_id").filter(
        (pl.col("zero_weight_share") >= 0.5) & (pl.col("min_q") < 1e-4))
    assert 0 < want.height < examples.height
    assert exported_ids(out) == ids(want)
    assert stdout.splitlines() == [
        f"wrote {out}",
        f"{want.height} of {examples.height} examples match zero_weight_share>=0.5 and "
        f"min_q<1e-4; wrote {want.height}"]
    side = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert side["filter"]["where"] == ["zero_weight_share>=0.5", "min_q<1e-4"]

    rest = tmp_path / "rest.jsonl"
    rc, stdout, _ = cli(capsys, "export", SAMPLE_RUN, "--out", rest, "--scheme", "infosft",
                        "--C", "1.0", "--where", "zero_weight_share>=0.5 and min_q<1e-4",
                        "--drop")
    assert rc == 0 and exported_ids(rest) == ids(examples) - ids(want)
    assert stdout.splitlines()[1] == (
        f"{want.height} of {examples.height} examples match zero_weight_share>=0.5 and "
        f"min_q<1e-4; dropped them, wrote {examples.height - want.height}")
    assert read_export_meta(rest)["filter"]["mode"] == "drop"

    rc, _, err = cli(capsys, "export", SAMPLE_RUN, "--out", tmp_path / "e.parquet",
                     "--where", "min_p<0.1")
    assert rc == 2 and "unknown field 'min_p'" in error_line(err)
    rc, _, err = cli(capsys, "export", SAMPLE_RUN, "--out", tmp_path / "e.parquet", "--drop")
    assert rc == 2 and "--drop needs a --where" in error_line(err)
    assert not (tmp_path / "e.parquet").exists()


# ---------------------------------------------------------------- the Export page

@pytest.fixture
def workspace(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    monkeypatch.setenv("INFOSFT_WORKSPACE", str(ws))
    return ws


def test_export_page_counts_and_exports_the_subset(workspace, examples, targets):
    pytest.importorskip("streamlit")
    from infosft.analysis.tune import Settings
    from tests.helpers import app_page

    C = Settings().C
    per = per_example(targets, "infosft", C=C)
    want = ids(per.filter(pl.col("weight_mass") < 0.13))
    assert 0 < len(want) < examples.height

    at = app_page("views/export.py")
    assert not at.exception and not at.error
    at.text_input(key="export_where").set_value("weight_mass<0.13").run()
    assert not at.exception and not at.error
    text = " ".join(m.value for m in at.markdown)
    assert f"{len(want)} of {examples.height} examples match" in text
    assert at.text_input(key="export_name").value == f"sample-infosft-C{C:g}-subset"
    at.button(key="export_go").click().run()
    assert not at.exception and not at.error
    out = workspace / "exports" / f"sample-infosft-C{C:g}-subset.parquet"
    assert exported_ids(out) == want
    assert read_export_meta(out)["filter"]["matched"] == len(want)

    # drop them instead: the rest is written
    at.radio(key="export_where_mode").set_value("drop").run()
    text = " ".join(m.value for m in at.markdown)
    assert f"drops them and writes {examples.height - len(want)}" in text
    at.checkbox(key="export_overwrite").check().run()
    at.button(key="export_go").click().run()
    assert not at.exception and not at.error
    assert exported_ids(out) == ids(examples) - want
    assert read_export_meta(out)["filter"]["mode"] == "drop"

    # a bad filter is one st.error line naming the field, and nothing can be exported
    at.text_input(key="export_where").set_value("weight<0.1").run()
    assert not at.exception and len(at.error) == 1
    assert "unknown field 'weight'" in at.error[0].value and "\n" not in at.error[0].value
    assert at.button(key="export_go").disabled
