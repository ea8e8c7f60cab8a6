"""Export round trip: what training will load lines up with scoring and the formulas."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from infosft.analysis.export import export_weighted, read_export_meta
from infosft.data import prepare
from tests.helpers import SAMPLE, reference_weights


@pytest.mark.parametrize("suffix,loader", [(".parquet", "parquet"), (".jsonl", "json")])
def test_export_round_trip(tmp_path, tiny_run, tokenizer, suffix, loader):
    import datasets

    out = export_weighted(tiny_run.path, tmp_path / f"w{suffix}", "infosft", C=2.0)
    ds = datasets.load_dataset(loader, data_files=str(out), split="train")
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:30]]
    assert len(ds) == len(rows)
    _, prepared = prepare(enumerate(rows, 1), tokenizer, max_length=2048)
    tokens = tiny_run.scan_tokens().sort("example_id", "position").collect()
    for rec, ex in zip(ds, prepared):
        assert rec["prompt"] == rows[ex.example_id]["prompt"]            # record fields kept
        assert rec["input_ids"] == ex.tokens.input_ids                     # = training tokens
        assert rec["labels"] == ex.tokens.labels()
        assert len(rec["weights"]) == len(rec["input_ids"])
        logp = tokens.filter(pl.col("example_id") == ex.example_id)["logp"].to_numpy()
        mask = np.array(ex.tokens.target_mask)
        w = np.array(rec["weights"])
        np.testing.assert_allclose(w[mask], reference_weights(logp[mask], "infosft", C=2.0),
                                   rtol=1e-5, atol=1e-7)
        assert (w[~mask] == 0).all()
    meta = read_export_meta(out)
    assert meta["scheme"] == "infosft" and meta["knobs"]["C"] == 2.0
    assert meta["n_examples"] == len(rows)


def test_export_profit_random_matches_stats_preview(tmp_path, tiny_run):
    from infosft.analysis.stats import load_targets, weights

    out = export_weighted(tiny_run.path, tmp_path / "r.parquet", "profit", direction="random",
                          threshold=0.4, seed=7)
    df = pl.read_parquet(out).sort("example_id")
    exported = np.concatenate([np.array(w)[np.array(l) != -100]
                               for w, l in zip(df["weights"], df["labels"])])
    preview = weights(load_targets(tiny_run)["logp"], "profit", direction="random",
                      threshold=0.4, seed=7)
    assert np.array_equal(exported, preview)
    assert 0.5 < exported.mean() < 0.7


def test_export_refuses_bad_target(tmp_path, tiny_run):
    from infosft.errors import InfosftError

    with pytest.raises(InfosftError, match="parquet or .jsonl"):
        export_weighted(tiny_run.path, tmp_path / "w.csv", "dft")
    with pytest.raises(ValueError, match="C"):
        export_weighted(tiny_run.path, tmp_path / "w.parquet", "infosft", C=-1)
    assert not (tmp_path / "w.parquet").exists()


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_exported_files_get_the_usual_permissions(tmp_path, tiny_run, suffix):
    """Like any file a plain open() makes (0666 less the umask), not mkstemp's 0600."""
    import os
    import stat

    from infosft.export_format import sidecar

    old = os.umask(0o027)
    try:
        out = export_weighted(tiny_run.path, tmp_path / f"w{suffix}", "dft")
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (out, sidecar(out))} == {
        out.name: 0o640, sidecar(out).name: 0o640}


def test_one_reader_of_the_export_metadata(tmp_path, tiny_run):
    """Training and the app read the same metadata: the Parquet key, else the sidecar."""
    from infosft.errors import InfosftError
    from infosft.export_format import read_meta, require_meta, sidecar

    out = export_weighted(tiny_run.path, tmp_path / "w.parquet", "dft")
    meta = read_export_meta(out)
    assert read_meta(out) == meta == json.loads(sidecar(out).read_text())
    sidecar(out).unlink()  # the Parquet file carries its own metadata
    assert read_meta(out) == meta == read_export_meta(out)
    jsonl = export_weighted(tiny_run.path, tmp_path / "w.jsonl", "dft")
    assert read_meta(jsonl)["scheme"] == "dft"
    sidecar(jsonl).write_text("{not json")
    with pytest.raises(InfosftError, match=r"w\.jsonl\.meta\.json: damaged export metadata"):
        read_meta(jsonl)
    sidecar(jsonl).unlink()
    assert read_meta(jsonl) is None and read_meta(tmp_path / "missing.parquet") is None
    with pytest.raises(InfosftError, match="not an infosft export"):
        require_meta(jsonl)
