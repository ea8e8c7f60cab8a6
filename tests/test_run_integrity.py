"""Nothing lost, nothing crashes, nobody in (issue #13): a scored run and an export
survive a failed ``--overwrite``, damaged files, a full disk and a second writer, and
``--resume`` repairs what a reader refuses. Every failure is one ``infosft: error:``
line naming the file."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from infosft.analysis.runs import list_runs
from infosft.analysis.score import ScoreConfig, score_dataset
from infosft.analysis.stats import load_targets
from infosft.analysis.store import Run
from infosft.errors import InfosftError
from infosft.runlock import holder
from tests.helpers import (ROOT, SAMPLE, cli, error_line, good_row, hold_score_after_part,
                           hooked_cli, wait_parked, write_jsonl)

ROWS = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
# Small batches and parts, so that a run of 12 examples has several parts.
SMALL_PARTS = ("--token-budget", "300", "--part-tokens", "200")


def score_argv(data, out, model, *flags) -> list[str]:
    return ["score", str(data), "--out", str(out), "--model", str(model), "--quiet", *flags]


def files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (the lock file aside: it names
    whoever last held it)."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}


def tokens(run: Path) -> pl.DataFrame:
    return Run(run).scan_tokens().sort("example_id", "position").collect()


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_model_dir) -> Path:
    """A complete run of 12 examples in several parts (the reference: copy it to change it)."""
    base = tmp_path_factory.mktemp("clean")
    data = write_jsonl(base / "data.jsonl", ROWS[:12])
    assert main_ok(score_argv(data, base / "run", tiny_model_dir, *SMALL_PARTS))
    assert len(Run(base / "run").part_paths()) >= 5
    return base / "run"


def main_ok(argv) -> bool:
    from infosft.app.cli import main

    return main(argv) == 0


@pytest.fixture
def run(clean, tmp_path) -> Path:
    """A copy of the clean run to damage."""
    return Path(shutil.copytree(clean, tmp_path / "run"))


def data_of(run: Path) -> str:
    return Run(run).meta()["config"]["source"]


def assert_same_run(got: Path, ref: Path) -> None:
    """Exactly one copy of every example, scored as in the reference run."""
    a, b = tokens(got), tokens(ref)
    assert a.select("example_id", "position").is_duplicated().sum() == 0
    assert a.select("example_id", "position", "token_id", "is_target").equals(
        b.select("example_id", "position", "token_id", "is_target"))
    np.testing.assert_allclose(a["logp"].to_numpy(), b["logp"].to_numpy(), atol=1e-5)
    ea, eb = Run(got).read_examples(), Run(ref).read_examples()
    assert ea.select("example_id", "n_tokens", "n_target").equals(
        eb.select("example_id", "n_tokens", "n_target"))
    np.testing.assert_allclose(ea["mean_logp"].to_numpy(), eb["mean_logp"].to_numpy(),
                               atol=1e-5)
    assert Run(got).meta()["status"] == "complete"


# ------------------------------------------------ a failed --overwrite loses nothing

@pytest.mark.parametrize("bad", ["malformed-data", "missing-model"])
def test_failed_overwrite_keeps_the_old_run(tmp_path, capsys, run, tiny_model_dir, bad):
    before = files(run)
    data, model = Path(data_of(run)), tiny_model_dir
    if bad == "malformed-data":
        data = write_jsonl(tmp_path / "bad.jsonl", [good_row(1), '{"prompt": "x", "resp'])
    else:
        model = tmp_path / "no-such-model"

    rc, _, err = cli(capsys, *score_argv(data, run, model, "--overwrite"))

    assert rc == 2
    assert str(data if bad == "malformed-data" else model) in error_line(err)
    assert files(run) == before
    assert Run(run).read_examples().height == 12 and tokens(run).height > 0


def test_failed_export_overwrite_keeps_the_old_export(tmp_path, capsys, run):
    out = tmp_path / "w.parquet"
    assert cli(capsys, "export", run, "--out", out)[0] == 0
    before = out.read_bytes()
    side = (tmp_path / "w.parquet.meta.json").read_bytes()
    part = Run(run).part_paths()[1]
    part.write_bytes(part.read_bytes()[:100])  # a part cut short

    rc, _, err = cli(capsys, "export", run, "--out", out, "--overwrite")

    assert rc == 2
    msg = error_line(err)
    assert str(part) in msg and "damaged" in msg and "--resume" in msg
    assert out.read_bytes() == before
    assert (tmp_path / "w.parquet.meta.json").read_bytes() == side


# --------------------------------------- damaged parts are refused, never read smaller

def _empty(part: Path) -> None:
    part.write_bytes(b"")


def _truncated(part: Path) -> None:
    part.write_bytes(part.read_bytes()[:-40])


def _foreign(part: Path) -> None:
    pl.DataFrame({"example_id": [1], "x": [0.5]}).write_parquet(part)


def _missing(part: Path) -> None:
    part.unlink()


def _duplicate(part: Path) -> None:
    shutil.copy(part, part.with_name("part-001-000000.parquet"))


@pytest.mark.parametrize("damage", [_empty, _truncated, _foreign, _missing, _duplicate],
                         ids=lambda f: f.__name__.strip("_"))
def test_damaged_part_is_one_line_naming_it(capsys, run, damage):
    part = Run(run).part_paths()[2]
    damage(part)
    named = run / "tokens" if damage in (_missing, _duplicate) else part

    for argv in (["stats", run], ["export", run, "--out", run.parent / "w.jsonl"]):
        rc, out, err = cli(capsys, *argv)
        assert rc == 2 and out == ""
        msg = error_line(err)
        assert f"{named}: damaged" in msg and "--resume" in msg, msg
    with pytest.raises(InfosftError, match="damaged"):
        load_targets(run)  # what the app loads
    assert not (run.parent / "w.jsonl").exists()


@pytest.mark.parametrize("name, content, reason", [
    ("meta.json", b"[1, 2]", "not an object"),
    ("meta.json", b"\xff\xfe garbage", "damaged"),
    ("examples.parquet", b"PAR1 cut", "damaged"),
])
def test_damaged_run_file_is_one_line_naming_it(tmp_path, capsys, run, name, content,
                                                 reason):
    (run / name).write_bytes(content)

    rc, _, err = cli(capsys, "export", run, "--out", tmp_path / "w.parquet")

    assert rc == 2
    msg = error_line(err)
    assert f"{run / name}:" in msg and reason in msg
    if name == "meta.json":  # the run picker lists it as unreadable, not crashes
        assert list_runs([run])["status"].to_list() == ["unreadable"]


def test_damaged_vocab_and_examples_count_are_refused(run):
    vocab = run / "vocab.parquet"
    vocab.write_bytes(vocab.read_bytes()[:50])
    with pytest.raises(InfosftError, match=f"{vocab}: damaged"):
        Run(run).read_vocab()
    examples = Run(run).read_examples()
    examples.head(10).write_parquet(run / "examples.parquet")
    with pytest.raises(InfosftError, match="10 examples, meta.json counts 12"):
        Run(run).read_examples()


# ----------------------------------------------------- --resume repairs a damaged run

def test_resume_repairs_duplicated_missing_damaged_and_incomplete_parts(capsys, clean, run,
                                                                         tiny_model_dir):
    parts = Run(run).part_paths()
    shutil.copy(parts[0], run / "tokens" / "part-001-000000.parquet")  # a second writer's copy
    parts[1].unlink()                                                   # lost
    _truncated(parts[2])                                                # cut short
    whole = pl.read_parquet(parts[3])
    whole.head(whole.height // 2).write_parquet(run / "tokens" / "part-002-000000.parquet")
    last = pl.read_parquet(parts[4])
    last.head(last.height - 1).write_parquet(parts[4])                  # an example incomplete
    with pytest.raises(InfosftError, match="damaged"):
        Run(run).scan_tokens()

    rc, out, err = cli(capsys, *score_argv(data_of(run), run, tiny_model_dir, "--resume",
                                           *SMALL_PARTS))

    assert rc == 0, err
    assert "scored 12 examples" in out
    assert_same_run(run, clean)
    assert not list(run.rglob("*.tmp"))


def test_resume_after_a_kill_between_last_part_and_examples(capsys, clean, run,
                                                            tiny_model_dir):
    """Killed after the last part was written: nothing is left to score, and the
    summary line has no rate to print."""
    meta = Run(run).meta()
    meta["status"] = "running"
    del meta["tokens_per_s"], meta["completed_at"]
    Run(run).write_meta(meta)
    (run / "examples.parquet").unlink()

    rc, out, err = cli(capsys, *score_argv(data_of(run), run, tiny_model_dir, "--resume"))

    assert rc == 0, err
    assert out.startswith("scored 12 examples")
    assert_same_run(run, clean)


def test_resume_accepts_the_same_file_however_spelled(tmp_path, capsys, monkeypatch,
                                                      tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "data.jsonl", ROWS[:3])
    assert cli(capsys, *score_argv("data.jsonl", "run", tiny_model_dir))[0] == 0
    for spelled in ("./data.jsonl", tmp_path / "data.jsonl"):
        rc, _, err = cli(capsys, *score_argv(spelled, "run", tiny_model_dir, "--resume"))
        assert rc == 0, err
    write_jsonl(tmp_path / "data.jsonl", ROWS[:4])  # changed content is still refused
    rc, _, err = cli(capsys, *score_argv(tmp_path / "data.jsonl", "run", tiny_model_dir,
                                         "--resume"))
    assert rc == 2 and "changed" in error_line(err)


def test_resume_of_a_run_without_a_config_is_one_line(capsys, run, tiny_model_dir):
    data = data_of(run)
    (run / "meta.json").write_text('{"status": "running"}')
    rc, _, err = cli(capsys, *score_argv(data, run, tiny_model_dir, "--resume"))
    assert rc == 2
    assert f"{run / 'meta.json'}: cannot resume" in error_line(err)


def test_overwrite_refuses_to_delete_its_own_data(capsys, run, tiny_model_dir):
    data = shutil.copy(data_of(run), run / "mine.jsonl")
    before = files(run)
    rc, _, err = cli(capsys, *score_argv(data, run, tiny_model_dir, "--overwrite"))
    assert rc == 2
    assert "--overwrite would delete" in error_line(err)
    assert files(run) == before


# -------------------------------------------------------- one writer per run directory

@pytest.mark.slow
def test_resume_while_the_scorer_runs_is_refused_naming_it(tmp_path, tiny_model_dir):
    """A second writer is refused while the first scores (parked after its first part by
    a test hook, holding the lock, until the test lets it go on)."""
    rows = ROWS[:12]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out, go = tmp_path / "run", tmp_path / "go"
    log = open(tmp_path / "stderr.txt", "w+")  # a file, not a pipe that could fill up
    proc = subprocess.Popen(hooked_cli(hold_score_after_part(1, release=go),
                                       *score_argv(data, out, tiny_model_dir, *SMALL_PARTS)),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert wait_parked(proc), f"the scorer never started: {log.seek(0) or log.read()}"
        assert (holder(out) or {}).get("pid") == proc.pid

        with pytest.raises(InfosftError) as err:
            score_dataset(ScoreConfig(source=str(data), out=str(out), model=str(tiny_model_dir)),
                          resume=True, progress=False)

        msg = str(err.value)
        assert "\n" not in msg and str(out) in msg and f"pid {proc.pid}" in msg
        assert proc.poll() is None  # refused while the first one was still at work
        # ... which it finishes undisturbed
        go.touch()
        assert proc.wait(timeout=600) == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        log.close()
    run = Run(out)
    assert run.meta()["status"] == "complete"
    assert tokens(out).select("example_id", "position").is_duplicated().sum() == 0
    assert run.read_examples()["example_id"].to_list() == list(range(len(rows)))


# ------------------------------------------------------------------------ full disk

@pytest.fixture
def full_disk(monkeypatch):
    """Every Parquet write goes to /dev/full: polars' own ENOSPC error, as on a full disk."""
    real = pl.DataFrame.write_parquet
    monkeypatch.setattr(pl.DataFrame, "write_parquet",
                        lambda self, file, **kw: real(self, "/dev/full", **kw))


def test_full_disk_during_export_names_the_file_and_keeps_the_old_one(tmp_path, capsys,
                                                                      clean, request):
    out = tmp_path / "w.parquet"
    assert cli(capsys, "export", clean, "--out", out)[0] == 0
    before, side = out.read_bytes(), (tmp_path / "w.parquet.meta.json").read_bytes()
    request.getfixturevalue("full_disk")

    rc, _, err = cli(capsys, "export", clean, "--out", out, "--overwrite", "--scheme", "dft")

    assert rc == 2
    assert error_line(err) == f"infosft: error: {out}: no space left on the device"
    assert out.read_bytes() == before
    assert (tmp_path / "w.parquet.meta.json").read_bytes() == side  # the pair as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.parquet", "w.parquet.meta.json"]


def test_full_disk_during_scoring_names_the_file(tmp_path, capsys, tiny_model_dir, full_disk):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:3])
    out = tmp_path / "run"

    rc, _, err = cli(capsys, *score_argv(data, out, tiny_model_dir))

    assert rc == 2
    msg = error_line(err)
    assert msg.startswith(f"infosft: error: {out}/") and msg.endswith(".parquet: no space "
                                                                      "left on the device")
    assert not list(out.rglob("*.tmp"))


# ------------------------------------------------------------- exports: where they go

def test_export_refuses_the_runs_own_files_and_a_directory(tmp_path, capsys, run):
    before = files(run)
    for target in (run / "examples.parquet", run / "tokens" / "w.parquet"):
        rc, _, err = cli(capsys, "export", run, "--out", target, "--overwrite")
        assert rc == 2 and "is a file of the run" in error_line(err)
    for directory in (tmp_path / "d.parquet", tmp_path / "e.jsonl.meta.json"):
        directory.mkdir()
        rc, _, err = cli(capsys, "export", run, "--out", directory.parent / directory.name
                         .removesuffix(".meta.json"), "--overwrite")
        assert rc == 2 and f"{directory} is a directory" in error_line(err)
    assert not (tmp_path / "e.jsonl").exists()
    (tmp_path / "file").write_text("mine")
    rc, _, err = cli(capsys, "export", run, "--out", tmp_path / "file" / "w.parquet")
    assert rc == 2 and f"{tmp_path / 'file'} is not a directory" in error_line(err)
    assert files(run) == before
    nested = tmp_path / "new" / "dir" / "w.jsonl"  # a missing directory is created
    assert cli(capsys, "export", run, "--out", nested)[0] == 0
    assert pl.read_ndjson(nested).height == 12


def test_export_removes_only_temp_files_no_live_writer_holds(tmp_path, capsys, clean):
    dead = [tmp_path / ".w.parquet.k1lled_1.tmp", tmp_path / ".w.parquet.meta.json.k1lled_2.tmp"]
    live = tmp_path / ".w.parquet.writing.tmp"
    others = [tmp_path / ".w2.parquet.k1lled_3.tmp", tmp_path / ".w.parquet.x.parquet.k1ll.tmp"]
    for p in (*dead, live, *others):
        p.write_bytes(b"half")
    with open(live, "rb+") as held:  # as a live export holds its temporary file
        fcntl.flock(held, fcntl.LOCK_EX)

        assert cli(capsys, "export", clean, "--out", tmp_path / "w.parquet")[0] == 0

    assert not any(p.exists() for p in dead)
    assert live.exists() and all(p.exists() for p in others)
    assert pl.read_parquet(tmp_path / "w.parquet").height == 12


def test_runs_and_exports_get_normal_permissions(tmp_path, capsys, tiny_model_dir):
    old = os.umask(0o022)
    try:
        data = write_jsonl(tmp_path / "d.jsonl", ROWS[:3])
        assert cli(capsys, *score_argv(data, tmp_path / "run", tiny_model_dir))[0] == 0
        assert cli(capsys, "export", tmp_path / "run", "--out",
                   tmp_path / "out" / "w.parquet")[0] == 0
    finally:
        os.umask(old)
    made = [p for p in tmp_path.rglob("*") if p.name != "d.jsonl"]
    assert {str(p.relative_to(tmp_path)) for p in made} >= {
        "run/meta.json", "run/examples.parquet", "run/vocab.parquet", "run/tokens",
        "out/w.parquet", "out/w.parquet.meta.json"}
    for p in made:
        want = 0o755 if p.is_dir() else 0o644
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def test_export_keeps_record_fields_of_mixed_types(tmp_path, capsys, tiny_model_dir):
    """Extra fields scoring ignores may differ in type between records; the export keeps
    every value (as JSON text where no column type holds them all) and stays loadable."""
    import datasets

    extra = [{"meta": 1, "tags": [1, 2], "big": 2 ** 70, "score": 1, "info": {"b": [1]}},
             {"meta": "x", "tags": "s", "big": 3, "score": 2.5, "info": {"b": ["x"]}},
             {"score": None}]
    rows = [{**good_row(i), **e} for i, e in enumerate(extra, 1)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    assert cli(capsys, *score_argv(data, tmp_path / "run", tiny_model_dir))[0] == 0
    for suffix, loader in ((".parquet", "parquet"), (".jsonl", "json")):
        out = tmp_path / f"w{suffix}"
        rc, _, err = cli(capsys, "export", tmp_path / "run", "--out", out)
        assert rc == 0, err
        ds = datasets.load_dataset(loader, data_files=str(out), split="train")
        assert ds["score"] == [1.0, 2.5, None]  # one type holds them: kept as numbers
        for field in ("meta", "tags", "big", "info"):
            assert [None if v is None else json.loads(v) for v in ds[field]] == \
                [r.get(field) for r in rows], field


def _corrupt_data(part: Path) -> None:
    """Flip bytes inside the data (the footer intact) where polars then fails to read the
    columns an export reads."""
    good = part.read_bytes()
    for offset in range(4, len(good) - 2000, 97):
        bad = bytearray(good)
        bad[offset:offset + 8] = bytes(b ^ 0xFF for b in bad[offset:offset + 8])
        part.write_bytes(bad)
        try:
            pl.read_parquet(part, columns=["example_id", "position", "token_id", "logp"])
        except pl.exceptions.PolarsError:
            return
    raise AssertionError("no corruption that polars detects")


def test_damaged_data_inside_a_part_is_named_and_resume_repairs_it(capsys, clean, run,
                                                                   tiny_model_dir):
    part = Run(run).part_paths()[1]
    _corrupt_data(part)
    Run(run).check_parts()  # the footer still reads: only reading the data finds it

    rc, _, err = cli(capsys, "export", run, "--out", run.parent / "w.parquet")
    assert rc == 2 and f"{part}: damaged" in error_line(err)

    rc, _, err = cli(capsys, *score_argv(data_of(run), run, tiny_model_dir, "--resume",
                                         *SMALL_PARTS))
    assert rc == 0, err
    assert_same_run(run, clean)


def test_meta_without_what_readers_use_is_one_line(tmp_path, capsys, run):
    meta = Run(run).meta()
    del meta["model"], meta["counts"]["target_tokens"]
    Run(run).write_meta(meta)
    for argv in (["stats", run], ["export", run, "--out", tmp_path / "w.parquet"]):
        rc, _, err = cli(capsys, *argv)
        assert rc == 2
        assert error_line(err) == (f"infosft: error: {run / 'meta.json'}: damaged (no "
                                   "counts.target_tokens, model); rescore with --overwrite")


def test_run_list_survives_a_meta_of_odd_types(tmp_path, run):
    Run(run).write_meta({"status": "complete", "model": "m", "dataset": ["d"],
                         "counts": {"examples": "12", "target_tokens": 5}, "created_at": 1})
    rows = list_runs([run]).to_dicts()
    assert rows == [{"name": "run", "path": str(run), "status": "complete", "model": None,
                     "dataset": None, "examples": None, "target_tokens": 5,
                     "created_at": None}]


def test_a_stray_copy_of_a_part_is_not_data(capsys, clean, run, tiny_model_dir):
    """A file manager's copy of a part is not one of the run's parts: not read twice,
    and --resume still numbers its new parts."""
    part = Run(run).part_paths()[1]
    shutil.copy(part, part.with_name(f"{part.stem} (copy).parquet"))
    assert tokens(run).equals(tokens(clean))

    rc, _, err = cli(capsys, *score_argv(data_of(run), run, tiny_model_dir, "--resume"))
    assert rc == 0, err
    assert_same_run(run, clean)
