"""The registry's schemes through the command line: ``infosft stats`` / ``export`` with
``--scheme eaft|excess|module:function`` and their knob flags, on a synthetic run with
the optional per-token fields. Expected numbers are computed here from the token parts."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import numpy as np
import polars as pl
import pytest

from infosft import schemes
from infosft.analysis.synthetic import make_run
from tests.helpers import SAMPLE_RUN, cli, error_line


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("syn") / "run", n_examples=40, prompt_tokens=5,
                    target_tokens=30, part_examples=15, fields=("entropy_top20", "logp_ref"))


def _targets(run) -> pl.DataFrame:
    return (pl.scan_parquet(str(run.path / "tokens" / "*.parquet"))
            .filter(pl.col("is_target")).sort("example_id", "position").collect())


def test_stats_eaft_with_its_alpha_flag(capsys, run):
    rc, out, _ = cli(capsys, "stats", run.path, "--scheme", "eaft", "--alpha", "2", "--json")
    assert rc == 0
    summary = json.loads(out)["scheme"]
    h = _targets(run)["entropy_top20"].to_numpy().astype(np.float64)
    assert summary["knobs"] == {"alpha": 2.0}
    assert summary["mean_weight"] == pytest.approx(np.mean((h / 3) ** 2), rel=1e-5)


def test_stats_excess_keeps_the_share_asked_for(capsys, run):
    rc, out, _ = cli(capsys, "stats", run.path, "--scheme", "excess", "--keep", "0.25",
                     "--per", "example", "--json")
    assert rc == 0
    summary = json.loads(out)["scheme"]
    assert summary["knobs"] == {"keep": 0.25, "per": "example"}
    # 30 targets per example: ceil(0.25 * 30) = 8 kept in each
    assert summary["share_nonzero"] == pytest.approx(8 / 30)


def test_export_excess_writes_the_selection(capsys, run, tmp_path):
    out_file = tmp_path / "excess.jsonl"
    rc, _, err = cli(capsys, "export", run.path, "--out", out_file, "--scheme", "excess",
                     "--keep", "0.5")
    assert rc == 0, err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    t = _targets(run)
    excess = (t["logp_ref"] - t["logp"]).to_numpy()
    k = math.ceil(0.5 * len(excess))
    kept = np.zeros(len(excess), bool)
    kept[np.argsort(-excess, kind="stable")[:k]] = True
    exported = np.concatenate([[w for w, lab in zip(r["weights"], r["labels"]) if lab != -100]
                               for r in rows])
    assert exported.tolist() == kept.astype(float).tolist()


def test_a_scheme_the_run_cannot_compute_is_one_line(capsys, tmp_path):
    old = make_run(tmp_path / "old", n_examples=3, prompt_tokens=2, target_tokens=5)  # no fields
    rc, _, err = cli(capsys, "stats", old.path, "--scheme", "eaft")
    assert rc == 2
    assert "entropy_top20" in error_line(err) and "rescore" in error_line(err)
    rc, _, err = cli(capsys, "stats", SAMPLE_RUN, "--scheme", "excess")
    assert rc == 2 and "--reference" in error_line(err)


def test_a_user_scheme_with_its_knob(capsys, run, tmp_path, monkeypatch):
    (tmp_path / "cli_user_schemes.py").write_text(textwrap.dedent('''
        def focal(logp, gamma=2.0):
            return (1 - logp.exp()) ** gamma
    '''))
    monkeypatch.chdir(tmp_path)
    try:
        rc, out, err = cli(capsys, "stats", run.path, "--scheme", "cli_user_schemes:focal",
                           "--knob", "gamma=3", "--json")
        assert rc == 0, err
        q = np.exp(_targets(run)["logp"].to_numpy().astype(np.float64))
        assert json.loads(out)["scheme"]["mean_weight"] == pytest.approx(np.mean((1 - q) ** 3), rel=1e-5)
        rc, _, err = cli(capsys, "stats", run.path, "--scheme", "cli_user_schemes:focal",
                         "--knob", "gamma")
        assert rc == 2 and "--knob expects NAME=VALUE" in error_line(err)
        rc, _, err = cli(capsys, "stats", run.path, "--scheme", "cli_user_schemes:focal",
                         "--knob", "beta=1")
        assert rc == 2 and "unknown knob 'beta'" in error_line(err)
    finally:
        sys.modules.pop("cli_user_schemes", None)
        schemes.base._REGISTRY.pop("cli_user_schemes:focal", None)


def test_bad_knob_values_are_one_line(capsys, run):
    rc, _, err = cli(capsys, "stats", run.path, "--scheme", "excess", "--keep", "0")
    assert rc == 2 and "keep must be in (0, 1]" in error_line(err)
    rc, _, err = cli(capsys, "stats", run.path, "--scheme", "nosuch")
    assert rc == 2 and "unknown scheme 'nosuch'" in error_line(err)


def test_readme_user_scheme_runs_as_written(capsys, tmp_path, monkeypatch):
    """The README's own-scheme file and its `infosft stats` line, as written."""
    import re

    from tests.helpers import ROOT

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## More schemes, and your own\n", 1)[1].split("\n## ", 1)[0]
    code = next(b for b in map(textwrap.dedent, re.findall(r"```python\n(.*?)```", section,
                                                             re.S))
                if b.startswith("# myschemes.py"))
    line = next(x.strip() for x in re.findall(r"```bash\n(.*?)```", section, re.S)[-1]
                .splitlines() if x.strip().startswith("infosft stats"))
    (tmp_path / "myschemes.py").write_text(textwrap.dedent(code))
    monkeypatch.chdir(tmp_path)
    argv = [str(ROOT / a) if a.startswith("sample_data/") else a for a in line.split()[1:]]
    try:
        rc, out, err = cli(capsys, *argv, "--json")
        assert rc == 0, err
        q = np.exp(pl.read_parquet(str(SAMPLE_RUN / "tokens" / "*.parquet"))
                   .filter(pl.col("is_target"))["logp"].to_numpy().astype(np.float64))
        assert json.loads(out)["scheme"]["mean_weight"] == pytest.approx(
            np.mean((1 - q) ** 3), rel=1e-5)
    finally:
        sys.modules.pop("myschemes", None)
        schemes.base._REGISTRY.pop("myschemes:focal", None)
