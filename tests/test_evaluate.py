"""Before/after evaluation (``analysis.evaluate``, ``infosft eval``): the layout is
ordinary scored runs, the report's numbers equal a direct recomputation from their
Parquet, KL matches a full-softmax torch computation, a model against itself is all
zero, bad input is one line; plus one short end-to-end run on the default model."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from infosft.analysis.answers import extract_answer
from infosft.analysis.delta import example_delta, example_deltas, top_movers
from infosft.analysis.evaluate import (ACCURACY, EVAL, KL_FILE, PROGRESS, REPORT, SCORED, EvalConfig,
                               combine_prior, evaluate_run, read_progress, report_table)
from infosft.analysis.stats import Targets
from infosft.analysis.store import Run
from infosft.app.cli import main
from infosft.errors import InfosftError
from tests.helpers import (CODE_ROWS, MATH_ROWS, lock_held_by_another_process,
                           make_training_run, perturbed, write_jsonl)

TINY_EVAL = dict(limit=5, accuracy_limit=3, max_new_tokens=6)


@pytest.fixture(scope="module")
def trainings(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trainings")


@pytest.fixture(scope="module")
def tuned_run(trainings, tiny_model_dir, tokenizer) -> Path:
    """The tiny model with its second layer perturbed, evaluated on 3 math + 2 code rows."""
    run = make_training_run(trainings / "tuned", perturbed(tiny_model_dir, 0.05, "layers.1"),
                            tokenizer, base=str(tiny_model_dir),
                            eval_rows=MATH_ROWS[:3] + CODE_ROWS[:2])
    evaluate_run(run, EvalConfig(**TINY_EVAL), progress=False)
    return run


@pytest.fixture(scope="module")
def same_run(trainings, tuned_run, tiny_model_dir, tokenizer) -> Path:
    """A "fine-tune" that is the base model itself, next to ``tuned_run`` (whose base
    scores it reuses)."""
    from transformers import AutoModelForCausalLM

    run = make_training_run(trainings / "same",
                            AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer,
                            base=str(tiny_model_dir), eval_rows=MATH_ROWS[:3] + CODE_ROWS[:2],
                            scheme="sft", C=None)
    evaluate_run(run, EvalConfig(**TINY_EVAL), progress=False)
    return run


def report(run: Path) -> dict:
    return json.loads((run / EVAL / REPORT).read_text())


def test_layout_is_scored_runs_the_app_can_open(tuned_run):
    rep = report(tuned_run)
    assert rep["status"] == "complete"
    for name in SCORED:
        r = Run(tuned_run / EVAL / name)
        meta = r.require_complete()
        assert meta["max_length"] == 512
        assert len(Targets.from_run(r)) == meta["counts"]["target_tokens"] > 0
        assert r.read_examples().height == 5
    assert not (tuned_run / EVAL / PROGRESS).exists()
    assert rep["task"]["source"] == str(tuned_run / "data" / "eval.jsonl")
    assert rep["training"]["scheme"] == "infosft" and rep["training"]["C"] == 2.0


def _direct(run_dir: Path) -> tuple[float, float, int]:
    """Mean NLL, mean q and count of target tokens, straight from the Parquet parts."""
    lp = (pl.read_parquet(run_dir / "tokens" / "*.parquet").filter(pl.col("is_target"))
          ["logp"].to_numpy().astype(np.float64))
    return float(-lp.mean()), float(np.exp(lp).mean()), len(lp)


def test_report_numbers_equal_direct_recomputation(tuned_run):
    rep, d = report(tuned_run), tuned_run / EVAL
    nums = {name: _direct(d / name) for name in SCORED}
    for s in ("task", "prior"):
        for who in ("base", "tuned"):
            nll, q, n = nums[f"{who}-{s}"]
            got = rep[s][who]
            assert got["mean_nll"] == pytest.approx(nll, rel=1e-9)
            assert got["mean_q"] == pytest.approx(q, rel=1e-9)
            assert got["target_tokens"] == n
    assert rep["learned"]["delta_nll"] == pytest.approx(
        nums["tuned-task"][0] - nums["base-task"][0], rel=1e-9, abs=1e-12)
    assert rep["learned"]["delta_q"] == pytest.approx(
        nums["tuned-task"][1] - nums["base-task"][1], rel=1e-9, abs=1e-15)
    assert rep["forgot"]["delta_nll"] == pytest.approx(
        nums["tuned-prior"][0] - nums["base-prior"][0], rel=1e-9, abs=1e-12)
    kl = pl.read_parquet(d / KL_FILE)
    assert kl.height == nums["base-prior"][2]
    assert rep["forgot"]["mean_kl"] == pytest.approx(kl["kl"].cast(pl.Float64).mean(), rel=1e-9)
    assert rep["forgot"]["mean_kl"] > 0
    acc = pl.read_parquet(d / ACCURACY)
    assert rep["accuracy"]["n"] == acc.height == 3
    assert rep["accuracy"]["tuned"] == pytest.approx(acc["tuned_correct"].mean())
    row = report_table([rep]).row(0, named=True)
    assert row["task_delta_nll"] == rep["learned"]["delta_nll"]
    assert row["prior_kl"] == rep["forgot"]["mean_kl"] and row["knobs"].startswith("C=2")


def test_kl_matches_full_softmax_torch(tuned_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    d = tuned_run / EVAL
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tuned = AutoModelForCausalLM.from_pretrained(tuned_run / "final", dtype=torch.float32).eval()
    tokens = (pl.read_parquet(d / "base-prior" / "tokens" / "*.parquet")
              .filter(pl.col("example_id") == 2).sort("position"))
    ids = torch.tensor([tokens["token_id"].to_list()])
    with torch.no_grad():
        lb = torch.log_softmax(base(ids).logits[0].double(), -1)    # (T, V)
        lt = torch.log_softmax(tuned(ids).logits[0].double(), -1)
    kl = pl.read_parquet(d / KL_FILE).filter(pl.col("example_id") == 2).sort("position")
    pos = torch.tensor(kl["position"].to_list())
    assert pos.tolist() == tokens.filter(pl.col("is_target"))["position"].to_list()
    want = (lb[pos - 1].exp() * (lb[pos - 1] - lt[pos - 1])).sum(-1)
    np.testing.assert_allclose(kl["kl"].to_numpy(), want.numpy(), rtol=1e-3, atol=1e-6)


def test_model_against_itself_is_all_zero(same_run):
    rep, d = report(same_run), same_run / EVAL
    assert rep["learned"] == {"delta_nll": 0.0, "delta_q": 0.0}
    assert rep["forgot"]["delta_nll"] == 0.0
    assert pl.read_parquet(d / KL_FILE)["kl"].abs().max() < 1e-6
    for s in ("task", "prior"):
        base, tuned = Run(d / f"base-{s}"), Run(d / f"tuned-{s}")
        per = example_deltas(base, tuned)
        assert per["max_abs_delta"].max() == 0.0
        view = example_delta(base, tuned, int(per["example_id"][0]))
        assert view.filter(pl.col("is_target"))["delta"].abs().max() == 0.0
        assert view.filter(~pl.col("is_target"))["delta"].null_count() == \
            view.filter(~pl.col("is_target")).height
        assert top_movers(base, tuned).height == 0
    acc = pl.read_parquet(d / ACCURACY)
    assert acc["base_output"].to_list() == acc["tuned_output"].to_list()


def test_base_scores_and_answers_are_reused_from_a_sibling(tuned_run, same_run):
    rep, other = report(same_run), report(tuned_run)
    assert set(rep["reused"]) == {"base-task", "base-prior", "accuracy-base"}
    for s in ("task", "prior"):
        assert rep[s]["base"] == other[s]["base"]
    a = pl.read_parquet(same_run / EVAL / ACCURACY)
    b = pl.read_parquet(tuned_run / EVAL / ACCURACY)
    assert a["base_output"].to_list() == b["base_output"].to_list()


def test_accuracy_file_answers_math_rows_only(tuned_run):
    acc = pl.read_parquet(tuned_run / EVAL / ACCURACY)
    assert set(acc.columns) >= {"example_id", "reference", "base_answer", "tuned_answer",
                                "base_correct", "tuned_correct"}
    assert acc["example_id"].to_list() == [0, 1, 2]  # the three math rows, not the code
    assert acc["reference"].to_list() == [extract_answer(r["response"]) for r in MATH_ROWS[:3]]
    for who in ("base", "tuned"):
        same = (acc[f"{who}_answer"] == acc["reference"]).fill_null(False)
        assert acc[f"{who}_correct"].to_list() == same.to_list()


def test_progress_fraction_and_eta(tmp_path):
    (tmp_path / PROGRESS).write_text(json.dumps({
        "stage": "kl-prior", "weights": {"base-task": 10, "tuned-task": 10, "kl-prior": 20},
        "completed": ["base-task", "tuned-task"], "done": 5, "total": 10,
        "started_at": 0}))
    p = read_progress(tmp_path)
    assert p["stage"].startswith("KL(base || tuned)") and p["fraction"] == pytest.approx(0.75)
    assert p["eta_s"] is None  # no stage times recorded: nothing measured, nothing guessed
    assert read_progress(tmp_path / "missing") is None


class _Clock:
    """``time.time`` of ``analysis.evaluate``, set by the test."""

    def __init__(self, t: float):
        self.t = t

    def time(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    import types

    import infosft.analysis.evaluate as ev

    c = _Clock(1000.0)
    monkeypatch.setattr(ev, "time", types.SimpleNamespace(time=c.time))
    return c


def test_eta_falls_steadily_within_a_stage(tmp_path, clock):
    """Two scoring stages of 10 s each, then KL at 10 tokens/s over 100 tokens: read
    every half second, the ETA is the time left (to 0.01 s) and only ever falls."""
    from infosft.analysis.evaluate import Progress

    prog = Progress(tmp_path / PROGRESS, {"base-task": 100, "tuned-task": 100, "kl-prior": 200})
    for name in ("base-task", "tuned-task"):
        prog.update(name, force=True)
        clock.t += 10
        prog.finish(name)
    etas = []
    for k in range(1, 10):
        clock.t = 1020 + k
        prog.update("kl-prior", 10 * k, 100)
        for _ in range(2):
            p = read_progress(tmp_path)
            assert p["eta_s"] == pytest.approx(1030 - clock.t, abs=0.01)
            etas.append(p["eta_s"])
            clock.t += 0.5
    assert all(b < a for a, b in zip(etas, etas[1:]))


WEIGHTS = {"base-task": 1000, "tuned-task": 1000, "base-prior": 500, "tuned-prior": 500,
           "kl-prior": 1000, "accuracy-base": 3000, "accuracy-tuned": 3000}


def test_eta_does_not_count_up_while_a_stage_waits_for_its_next_measure(tmp_path, clock):
    """The reported case: the first scoring part measured 26 s in (3% of the work), then
    20 s without a new part. The old ETA grew from ~14 to ~25 minutes; now it counts down
    with the clock, and equals the measured rates' remaining time."""
    from infosft.analysis.evaluate import Progress

    prog = Progress(tmp_path / PROGRESS, WEIGHTS)
    prog.update("base-task", force=True)
    scorer = Run(tmp_path / "base-task")
    scorer.path.mkdir()
    scorer.write_progress(0, 300, 1000, 20.0)  # 300 of 1000 tokens in 20 s of scoring
    os.utime(scorer.progress_path(0), (1026, 1026))
    clock.t = 1026
    first = read_progress(tmp_path)
    per_unit = 20.0 / 300  # the only measure so far: seconds per token of base-task
    left = 700 * per_unit + sum(w for s, w in WEIGHTS.items() if s != "base-task") * per_unit
    assert first["eta_s"] == pytest.approx(left, rel=1e-6)
    assert first["fraction"] == pytest.approx(300 / sum(WEIGHTS.values()))
    clock.t = 1046
    later = read_progress(tmp_path)
    assert later["eta_s"] == pytest.approx(first["eta_s"] - 20, rel=1e-6)


def test_eta_is_none_until_something_is_measured(tmp_path, clock):
    from infosft.analysis.evaluate import Progress

    prog = Progress(tmp_path / PROGRESS, WEIGHTS)
    prog.update("base-task", force=True)
    clock.t += 30
    p = read_progress(tmp_path)
    assert p["eta_s"] is None and p["stage"] == "scoring the task set (base model) (starting)"
    prog.finish("base-task")  # 30 s for 1000 units: the next stages are timed from it
    prog.update("tuned-task", force=True)
    clock.t += 5
    p = read_progress(tmp_path)
    assert p["stage"] == "scoring the task set (tuned model) (starting)"
    forward = (1000 + 500 + 500 + 1000) * 0.03 - 5  # tuned-task counted down from its start
    assert p["eta_s"] == pytest.approx(forward + 6000 * 0.03, rel=1e-6)


def test_prior_sets_of_different_formats_combine(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": "Hi?", "answer": "Hello."}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"messages": [{"role": "user", "content": "x"},
                                                         {"role": "assistant", "content": "y"}]}])
    out = combine_prior([str(a), str(b)], tmp_path / "prior.jsonl", limit=None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == ["Hello.", "y"]
    assert [r["prior_source"] for r in rows] == [str(a), str(b)]
    t = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}])
    with pytest.raises(InfosftError, match="mix plain text and conversations"):
        combine_prior([str(a), str(t)], tmp_path / "p2.jsonl", limit=None)


def _cli_error(capsys, *argv) -> str:
    assert main(["eval", *map(str, argv), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_cli_one_line_errors(tmp_path, capsys, tuned_run, tiny_model_dir):
    assert "no such training run directory" in _cli_error(capsys, tmp_path / "nope")
    (tmp_path / "scored").mkdir()
    assert "not a training run (no config.yaml)" in _cli_error(capsys, tmp_path / "scored")
    running = make_training_run(tmp_path / "running", None, None, base=str(tiny_model_dir),
                                eval_rows=MATH_ROWS[:2], state="running")
    err = _cli_error(capsys, running)
    assert "training is not finished (state 'running')" in err
    # all runs are checked before the first starts: the finished one is left untouched
    assert "training is not finished" in _cli_error(capsys, tuned_run, running, "--overwrite")
    assert report(tuned_run)["status"] == "complete"
    assert "already exists; use --overwrite" in _cli_error(capsys, tuned_run)
    (running / "status.json").write_text('{"state": "finished"}')
    assert "no final model" in _cli_error(capsys, running)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": ""}])
    shutil.copytree(tuned_run / "final", running / "final")
    err = _cli_error(capsys, running, "--task-data", bad)
    assert err == f"infosft: error: {bad}, line 1, field 'response': empty"
    assert "--max-new-tokens must be >= 1" in _cli_error(capsys, running, "--max-new-tokens", 0)
    cfg = yaml.safe_load((running / "config.yaml").read_text())
    (running / "config.yaml").write_text(yaml.safe_dump({**cfg, "max_length": "long"}))
    assert "config.yaml: field 'max_length': expected an integer" in _cli_error(capsys, running)
    (running / "config.yaml").write_text("model: [unclosed")
    assert "config.yaml, line 1: not valid YAML" in _cli_error(capsys, running)


@pytest.mark.slow
def test_end_to_end_default_model(tmp_path, default_dir, capsys):
    """A real ``infosft train`` run (LoRA, a few steps, the embedded default model) on
    math rows, then ``infosft eval`` of it: the adapter is loaded onto its base, the held-out
    task NLL drops, the prior set moves (KL > 0) and greedy answers are scored."""
    data = write_jsonl(tmp_path / "math.jsonl", MATH_ROWS[:16])
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--scheme", "infosft",
                 "--max-steps", "4", "--batch-size", "4", "--lr", "1e-3", "--eval-split",
                 "0.25", "--max-length", "512", "--logging-steps", "2"]) == 0
    assert (run / "final" / "adapter_config.json").exists()
    # few rows and short answers: the test is about the path, not the numbers (it was
    # half the slow tier with 6 rows and 48 new tokens)
    assert main(["eval", str(run), "--limit", "4", "--accuracy-limit", "2",
                 "--max-new-tokens", "16", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "learned: task NLL" in out and "accuracy" in out
    rep = report(run)
    assert rep["status"] == "complete" and rep["base_model"] == "default"
    assert rep["task"]["examples"] == 4 and rep["prior"]["examples"] == 4
    assert rep["models"]["base"]["revision"].startswith("sha256:")
    assert rep["models"]["tuned"]["name"] == str(run / "final")   # the adapter, merged
    assert rep["learned"]["delta_nll"] < 0 and math.isfinite(rep["learned"]["delta_q"])
    assert rep["forgot"]["mean_kl"] > 0 and math.isfinite(rep["forgot"]["delta_nll"])
    assert rep["accuracy"]["n"] == 2 and rep["accuracy"]["style"] == "marker"
    acc = pl.read_parquet(run / EVAL / ACCURACY)
    assert acc["base_output"].str.len_chars().min() > 0
    # the base model's numbers on the task set equal a plain scoring of the same rows
    direct = _direct(run / EVAL / "base-task")
    assert rep["task"]["base"]["mean_nll"] == pytest.approx(direct[0], rel=1e-9)


# --- nothing lost, nobody in (issue #13) ------------------------------------------------

def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_overwrite_keeps_the_old_evaluation_until_the_new_one_can_run(tmp_path, capsys,
                                                                       tuned_run):
    """Bad task data, missing or damaged weights: one line, and the complete evaluation
    (report, scored runs, KL) is still there."""
    run = tmp_path / "tuned"
    shutil.copytree(tuned_run, run, ignore=shutil.ignore_patterns(".lock"))
    before, before_report = _snapshot(run), report(run)
    assert before_report["status"] == "complete" and "eval/kl-prior.parquet" in before
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": "r"}, "{oops"])
    assert f"{bad}, line 2" in _cli_error(capsys, run, "--overwrite", "--task-data", bad)
    missing = tmp_path / "missing.jsonl"
    assert str(missing) in _cli_error(capsys, run, "--overwrite", "--task-data", missing)
    weights = run / "final" / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)  # damaged: it loads only in the model loader
    assert "cannot load model" in _cli_error(capsys, run, "--overwrite")
    weights.unlink()
    assert "no model weights in it" in _cli_error(capsys, run, "--overwrite")
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if not k.startswith("final/")} == {
        k: v for k, v in before.items() if not k.startswith("final/")}
    shutil.copy(tuned_run / "final" / "model.safetensors", weights)
    assert main(["eval", str(run), "--overwrite", "--quiet", "--limit", "5",
                 "--accuracy-limit", "3", "--max-new-tokens", "6"]) == 0
    assert report(run)["status"] == "complete" and report(run)["pid"] == os.getpid()
    assert report(run)["created_at"] >= before_report["created_at"]


def test_an_evaluation_holds_the_run(tmp_path, capsys, tuned_run):
    """While another process holds the run (an evaluation, a trainer), `infosft eval`
    fails at once naming it and leaves the old evaluation alone; the app's pre-check
    (check_eval_dir) says so too."""
    from infosft.analysis.evaluate import check_eval_dir, open_training_run

    run = tmp_path / "tuned"
    shutil.copytree(tuned_run, run, ignore=shutil.ignore_patterns(".lock"))
    before = _snapshot(run)
    with lock_held_by_another_process(run) as holder:
        err = _cli_error(capsys, run, run, "--overwrite")  # named twice: evaluated once
        assert f"in use by another infosft process (pid {holder.pid})" in err
        with pytest.raises(InfosftError, match=f"pid {holder.pid}"):
            check_eval_dir(open_training_run(run), True)
        assert _snapshot(run) == before
    check_eval_dir(open_training_run(run), True)  # free again once its holder is gone


def test_an_evaluation_loads_each_model_once(tmp_path, monkeypatch, tuned_run, tiny_model_dir):
    """Scoring the four sets, KL and the greedy answers all run on the base and the
    tuned model loaded once each (the real loader, counted)."""
    import infosft.analysis.score as score_module
    import infosft.models as models_module

    real, loads = models_module.load_model, []

    def counting_load_model(name=None, **kw):
        loads.append(str(name))
        return real(name, **kw)

    monkeypatch.setattr(models_module, "load_model", counting_load_model)
    monkeypatch.setattr(score_module, "load_model", counting_load_model)
    run = tmp_path / "tuned"
    shutil.copytree(tuned_run, run, ignore=shutil.ignore_patterns(".lock"))
    rep = evaluate_run(run, EvalConfig(**TINY_EVAL, overwrite=True), progress=False)
    assert rep["status"] == "complete" and (run / EVAL / KL_FILE).exists()
    assert sorted(loads) == sorted([str(tiny_model_dir), str(run / "final")])



def test_a_scorer_finalizing_its_run_is_ending_not_starting(tmp_path, clock):
    """The scorer removes its progress files once the run is complete, before the stage
    finishes: the stage counts as done, with no time left, not as starting again."""
    from infosft.analysis.evaluate import Progress

    prog = Progress(tmp_path / PROGRESS, {"base-task": 100, "tuned-task": 100})
    prog.update("base-task", force=True)
    (tmp_path / "base-task").mkdir()
    (tmp_path / "base-task" / "meta.json").write_text(json.dumps({"status": "complete"}))
    clock.t += 10
    p = read_progress(tmp_path)
    assert p["stage"] == "scoring the task set (base model)" and p["fraction"] == 0.5
    assert p["eta_s"] is None  # nothing measured to time tuned-task by, and nothing guessed

# --- nothing skipped silently (issue #17) -----------------------------------------------

def test_accuracy_not_asked_for_says_so(tmp_path, tiny_model_dir, tokenizer, capsys):
    run = make_training_run(tmp_path / "run", perturbed(tiny_model_dir, 0.05, "layers.1"),
                            tokenizer, base=str(tiny_model_dir), eval_rows=MATH_ROWS[:3])
    assert main(["eval", str(run), "--quiet", "--limit", "3", "--accuracy-limit", "0"]) == 0
    rep = report(run)
    assert rep["accuracy"] is None and rep["prior_accuracy"] is None
    assert rep["skipped"]["accuracy"] == "not asked for (accuracy limit 0)"
    out = capsys.readouterr().out
    assert "; accuracy skipped: not asked for (accuracy limit 0)" in out


def test_accuracy_of_truncated_examples_says_why(tmp_path, tiny_model_dir, tokenizer):
    """Every held-out math example cut at max_length before its answer: no accuracy, and
    the report says so (the table used to show a bare None)."""
    run = make_training_run(tmp_path / "run", perturbed(tiny_model_dir, 0.05, "layers.1"),
                            tokenizer, base=str(tiny_model_dir), eval_rows=MATH_ROWS[:3],
                            max_length=100)
    rep = evaluate_run(run, EvalConfig(**TINY_EVAL), progress=False)
    assert rep["status"] == "complete" and rep["accuracy"] is None
    assert rep["skipped"]["accuracy"] == ("every one of the 3 held-out examples with an "
                                          "answer was cut at max_length 100 before its answer")
    # the bundled prior set (capitals, ...) has no final answers to check
    assert "not math with final answers" in rep["skipped"]["prior_accuracy"]
    assert report(run)["skipped"] == rep["skipped"]


def test_computed_accuracy_has_no_skip_reason(tuned_run):
    rep = report(tuned_run)
    assert rep["accuracy"]["n"] == 3 and "accuracy" not in rep["skipped"]
