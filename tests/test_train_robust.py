"""Training runs survive their users (issue #13): nothing lost (``--overwrite`` replaces a
run only once the new data and model have loaded, and only a training run), nothing
crashes (odd configs and damaged run files give one line or are tolerated), nobody in
(a run directory has one writer: its lock; a process is its pid *and* start time).

Real tiny-model runs through the real CLI and Trainer; the lock holder and the pid
stranger are real second processes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from infosft.app.cli import main
from infosft import process
from infosft import train_status as ts
from infosft.errors import InfosftError
from infosft.train_config import resolve, resume_config

from tests.helpers import cli_args, lock_held_by_another_process, tiny_cfg, write_jsonl


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rows = [{"text": f"Row {i}: the quick brown fox jumps over the lazy dog."} for i in range(8)]
    return write_jsonl(tmp_path_factory.mktemp("robust-data") / "d.jsonl", rows)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data, tiny_model_dir) -> Path:
    """A finished 2-step run with a checkpoint at each step, made by the CLI."""
    run = tmp_path_factory.mktemp("robust") / "run"
    values = tiny_cfg(data, run, tiny_model_dir, max_steps=2, save_steps=1)
    assert main(["train", *cli_args(values)]) == 0
    assert ts.read_status(run)["state"] == "finished"
    return run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run but its lock, by relative path."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("infosft: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and len(err) < 600, err
    return err.strip()


# ------------------------------------------------------------------ nothing lost


def test_overwrite_with_bad_data_or_model_keeps_the_old_run(tmp_path, capsys, finished, data,
                                                            tiny_model_dir):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    assert "final/model.safetensors" in before and ts.last_checkpoint(run).name == "checkpoint-2"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, '{"text": "cut'])
    err = one_line_error(capsys, ["train", *cli_args(tiny_cfg(bad, run, tiny_model_dir)),
                                  "--overwrite"])
    assert f"{bad}, line 2" in err
    missing = tmp_path / "no-such-model"
    err = one_line_error(capsys, ["train", *cli_args(tiny_cfg(data, run, missing)),
                                  "--overwrite"])
    assert str(missing) in err
    assert snapshot(run) == before  # final/, checkpoints, status "finished": all there
    # and a good --overwrite does replace it
    assert main(["train", *cli_args(tiny_cfg(data, run, tiny_model_dir, max_steps=1)),
                 "--overwrite"]) == 0
    assert ts.read_status(run)["step"] == 1 and ts.last_checkpoint(run) is None
    assert not (run / ".lock").exists()  # released with the run
    assert (run / "final" / "model.safetensors").exists()


def test_overwrite_refuses_what_is_not_a_training_run(tmp_path, capsys, data, tiny_model_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    err = one_line_error(capsys, ["train", *cli_args(tiny_cfg(data, mine, tiny_model_dir)),
                                  "--overwrite"])
    assert "is not a training run; refusing to overwrite it" in err
    assert (mine / "thesis.tex").read_text() == "years of work"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    err = one_line_error(capsys, ["train", *cli_args(tiny_cfg(data, a_file, tiny_model_dir)),
                                  "--overwrite"])
    assert f"{a_file} exists and is not a directory" in err
    assert a_file.read_text() == "keep me"


def test_run_files_have_the_umask_permissions(tmp_path, data, tiny_model_dir):
    """Files the trainer writes follow the umask like any other file (here 027: 0640)."""
    old = os.umask(0o027)
    try:
        from infosft.train import train

        run = train(resolve(tiny_cfg(data, tmp_path / "run", tiny_model_dir, max_steps=1,
                                     eval_split=0.25, save_steps=1)))
    finally:
        os.umask(old)
    for name in (ts.STATUS, ts.CONFIG, ts.METRICS, ts.SOURCE, ts.EVAL_DATA,
                 f"{ts.FINAL}/{ts.MODEL_INFO}"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o640, name
    assert stat.S_IMODE(run.stat().st_mode) == 0o750
    # what the libraries write too: safetensors makes its files owner-only (0600)
    saved = [p for d in (run / ts.FINAL, ts.last_checkpoint(run)) for p in d.rglob("*")]
    assert any(p.suffix == ".safetensors" for p in saved)
    for p in saved:
        assert stat.S_IMODE(p.stat().st_mode) == (0o750 if p.is_dir() else 0o640), p


# ------------------------------------------------------------------ nobody in


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path, capsys, finished, data,
                                                         tiny_model_dir):
    """While another process holds the run (a trainer still loading, an evaluation), a
    --resume and an --overwrite fail with one line naming its pid and change nothing."""
    run = copy_run(finished, tmp_path / "run")
    ts.write_status(run, state="stopped")  # resumable from checkpoint-2
    assert ts.read_status(run)["resumable"] is True
    before = snapshot(run)
    with lock_held_by_another_process(run) as holder:
        for extra in (["--out", str(run), "--resume"],
                      [*cli_args(tiny_cfg(data, run, tiny_model_dir)), "--overwrite"]):
            err = one_line_error(capsys, ["train", *extra])
            assert f"in use by another infosft process (pid {holder.pid})" in err
        assert snapshot(run) == before
    # the kernel dropped the lock with its holder: the resume runs (0 steps left)
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert ts.read_status(run)["state"] == "finished"


def test_pid_reuse_is_not_a_live_run(tmp_path, capsys, finished):
    """A status naming a live stranger (the pid, another start time) is a dead run:
    failed, resumable, --resume allowed; the same pid and start time is running."""
    run = copy_run(finished, tmp_path / "run")
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        me = process.current()
        real = process.start_time(stranger.pid)
        ts.write_status(run, state="running", pid=stranger.pid, host=me["host"],
                        started=real - 3600)
        s = ts.read_status(run)
        assert s["state"] == "failed" and s["resumable"] is True, s
        assert f"pid {stranger.pid}" in s["error"]
        ts.write_status(run, state="running", pid=stranger.pid, started=real)
        assert ts.read_status(run)["state"] == "running"
        err = one_line_error(capsys, ["train", "--out", str(run), "--resume"])
        assert "still running" in err
        ts.write_status(run, started=None)  # a status from before start times: pid alone
        assert ts.read_status(run)["state"] == "running"
        ts.write_status(run, started=float("nan"))  # damaged: unknown, so pid alone too
        assert ts.read_status(run)["started"] is None
        ts.write_status(run, started=real - 3600)
        assert main(["train", "--out", str(run), "--resume"]) == 0
    finally:
        stranger.kill()
        stranger.wait()
    s = ts.read_status(run)
    assert s["state"] == "finished" and s["pid"] == os.getpid()
    assert s["started"] == process.current()["started"]


# ------------------------------------------------------------------ resume


def test_resume_takes_the_same_file_by_any_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "data.jsonl", [{"text": "x"}])
    stored = vars(resolve({"data": "data.jsonl", "out": "run", "max_steps": 3}))
    cfg = resume_config(stored, {}, {"data": "./data.jsonl"})
    assert Path(cfg.data).resolve() == tmp_path / "data.jsonl"
    cfg = resume_config(stored, {}, {"data": str(tmp_path / "data.jsonl")})
    write_jsonl(tmp_path / "other.jsonl", [{"text": "x"}])
    with pytest.raises(InfosftError, match="--resume: 'data'"):
        resume_config(stored, {}, {"data": "other.jsonl"})


def test_resume_refuses_an_edited_config_or_changed_data(tmp_path, capsys, finished):
    run = copy_run(finished, tmp_path / "run")
    ts.write_status(run, state="stopped")
    config = yaml.safe_load((run / ts.CONFIG).read_text())
    (run / ts.CONFIG).write_text(yaml.safe_dump({**config, "lr": 0.5}))
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume"])
    assert f"{run / ts.CONFIG} was edited since the run started: 'lr' was 0.001, now 0.5" in err
    (run / ts.CONFIG).write_text(yaml.safe_dump({**config, "lr": "fast"}))
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume"])
    assert f"{run / ts.CONFIG}: config field 'lr': expected a number, got 'fast'" in err
    changed = write_jsonl(tmp_path / "changed.jsonl", [{"text": f"other {i}"} for i in range(8)])
    (run / ts.CONFIG).write_text(yaml.safe_dump({**config, "data": str(changed)}))
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume"])
    assert "the data changed since the run started (content_hash" in err
    (run / ts.SOURCE).write_text('{"content_hash": ')
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume"])
    assert f"{run / ts.SOURCE}: damaged" in err
    assert ts.read_status(run)["state"] == "stopped"  # none of these touched the run


# ------------------------------------------------------------------ configs


BOMB = "a: &a [" + ", ".join(["lol"] * 10) + "]\n" + "".join(
    f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcde", "bcdef")
) + "lr: *f\n"


@pytest.mark.parametrize("text, words", [
    ("- data\n- out\n", ["expected a mapping of config fields, got list"]),
    ("0.001\n", ["expected a mapping of config fields, got float"]),
    ("learning_rate: 0.1\n", ["unknown config key 'learning_rate'"]),
    ("lr: fast\n", ["config field 'lr': expected a number, got 'fast'"]),
    ("max_steps: 1.5\n", ["config field 'max_steps'", "integer", "1.5"]),
    ("lora_r: true\n", ["config field 'lora_r'", "integer", "True"]),
    ("device: foo\n", ["config field 'device': unknown device 'foo'"]),
    (BOMB, ["line 2: not valid YAML (aliases (*name) are not allowed"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00", ["not a UTF-8 text file (byte 0x89 at offset 0)"]),
    ("lr: 0.1\n\tseed: 2\n", ["line 2: not valid YAML (found character '\\t'"]),
    ("lr: 0.1\nseed: 1\nlr: 0.2\n", ["line 3: not valid YAML (duplicate key 'lr')"]),
    ("data: caf\xe9\n".encode("latin-1"), ["not a UTF-8 text file (byte 0xe9 at offset 9)"]),
    ("[" * 50000, ["nested too deeply"]),
])
def test_odd_config_files_are_one_line_naming_file_and_key(tmp_path, capsys, data, text, words):
    path = tmp_path / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    err = one_line_error(capsys, ["train", "--config", str(path), "--data", str(data), "--out",
                                  str(tmp_path / "r")])
    assert err.startswith(f"infosft: error: {path}")
    for w in words:
        assert w in err
    assert not (tmp_path / "r").exists()


def test_config_file_niceties(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 2e-4\nwarmup_ratio: 1e-1\n")  # YAML 1.1 would read strings
    from infosft.train_config import load_config

    assert load_config(path) == {"lr": 2e-4, "warmup_ratio": 0.1}
    path.write_text("# nothing yet\n")
    assert load_config(path) == {}
    jpath = tmp_path / "run.json"
    jpath.write_text('{"lr": 0.1, "lr": 0.2}')
    with pytest.raises(InfosftError, match=r"run.json: not valid JSON \(duplicate key 'lr'\)"):
        load_config(jpath)


@pytest.mark.parametrize("device, words", [
    ("foo", ["unknown device 'foo'"]),
    ("", ["'device'", "non-empty"]),
    ("cuda:99", ["'device'"]),
    ("cpu:0", ["training takes cpu, cuda, mps, not 'cpu:0'"]),
    ("meta", ["'device'", "'meta'"]),
])
def test_unknown_devices_fail_before_anything_loads(tmp_path, capsys, data, device, words):
    err = one_line_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "r"),
                                  "--device", device])
    for w in words:
        assert w in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ damaged run files


def test_damaged_run_files_are_tolerated(tmp_path):
    from infosft.analysis.training import list_train_runs

    root = tmp_path / "runs"
    damage = {
        "list": {ts.STATUS: b"[1, 2]", ts.CONFIG: b"- a\n"},
        "binary": {ts.STATUS: b"\xff\xfe\x00", ts.CONFIG: b"\xff\xfe\x00",
                   ts.METRICS: b"\xff\n{\"step\": 1, \"loss\": 2}\n"},
        "types": {ts.STATUS: json.dumps({"state": 7, "step": "three", "pid": "me",
                                         "started_at": [1], "resumable": "yes"}).encode(),
                  ts.CONFIG: BOMB.encode(), ts.METRICS: b'{"step": "x", "loss": 1}\n'},
        "torn": {ts.STATUS: b'{"state": "runn', ts.CONFIG: b"lr: [unclosed"},
    }
    for name, files in damage.items():
        for rel, content in files.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / rel).write_bytes(content)
    (root / "dir-status" / ts.STATUS).mkdir(parents=True)
    for name in [*damage, "dir-status"]:
        s = ts.read_status(root / name)
        assert s["state"] is None and s["step"] is None and s["resumable"] is False, (name, s)
    table = list_train_runs(root)
    assert sorted(table["name"].to_list()) == sorted(damage)
    ts.truncate_metrics(root / "types", 5)  # a resume of it: the step-less line goes
    assert ts.read_metrics(root / "types") == []
    # a checkpoint whose trainer_state.json was cut by a kill does not count
    ckpts = root / "torn" / ts.CHECKPOINTS
    for n, state in ((1, "{}"), (2, '{"global_step": ')):
        (ckpts / f"checkpoint-{n}").mkdir(parents=True)
        (ckpts / f"checkpoint-{n}" / "trainer_state.json").write_text(state)
    (ckpts / "checkpoint-3").mkdir()  # no trainer_state.json at all
    assert ts.last_checkpoint(root / "torn").name == "checkpoint-1"


# ------------------------------------------------------------------ exported data


@pytest.mark.parametrize("ids, words", [
    ([1, 2, 10**6], ["token id 1000000 is outside the model's vocabulary"]),
    ([1, -5, 3], ["token id -5 is outside"]),
    ([1, 2.5, 3], ["line 2, field 'input_ids': expected whole numbers"]),
    ([1, float("nan"), 3], ["line 2, field 'input_ids': expected whole numbers"]),
    ([True, False, True], ["line 2, field 'input_ids': expected a flat list of numbers"]),
])
def test_exported_token_ids_are_checked_against_the_model(tmp_path, capsys, tiny_model_dir,
                                                          ids, words):
    """Ids an export of another model (or a hand edit) carries fail in one line before
    training, not as an index error in the middle of it."""
    good = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "weights": [0, 1.0, 1.0]}
    bad = {"input_ids": ids, "labels": [-100, 2, 3], "weights": [0, 1.0, 1.0]}
    data = tmp_path / "export.jsonl"
    data.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")  # NaN as JSON allows
    err = one_line_error(capsys, ["train", *cli_args(tiny_cfg(data, tmp_path / "r",
                                                              tiny_model_dir, max_steps=1))])
    assert str(data) in err
    for w in words:
        assert w in err
    assert not (tmp_path / "r").exists()


def test_a_missing_tracker_fails_before_the_run_starts(tmp_path, capsys, finished, data,
                                                       tiny_model_dir):
    """The Trainer finds a tracker that is not installed only once it is built; checked
    with the other settings, the old run is kept (here under --overwrite)."""
    if __import__("importlib").util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    err = one_line_error(capsys, ["train", *cli_args(tiny_cfg(data, run, tiny_model_dir)),
                                  "--report-to", "wandb", "--overwrite"])
    assert "config field 'report_to' ['wandb']" in err and "wandb" in err
    assert snapshot(run) == before


def test_overwrite_refuses_to_delete_its_own_inputs(tmp_path, capsys, finished, data):
    """`--model RUN/final --out RUN --overwrite` would delete the model it trains (and
    make the adapter its own base); data inside RUN would be gone for any resume."""
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    err = one_line_error(capsys, ["train", *cli_args(tiny_cfg(data, run, run / "final")),
                                  "--overwrite"])
    assert f"config field 'model': {run / 'final'} lies inside {run}" in err
    inner = shutil.copy(data, run / "d.jsonl")
    err = one_line_error(capsys, ["train", *cli_args(tiny_cfg(inner, run, run / "final")),
                                  "--overwrite"])
    assert "config field 'data'" in err
    Path(inner).unlink()
    assert snapshot(run) == before
