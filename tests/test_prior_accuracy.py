"""Forgetting as answers lost: on a math prior set, ``infosft eval`` answers greedily with
both models and counts the examples right before and wrong after."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from infosft.analysis.accuracy import accuracy_summary
from infosft.analysis.evaluate import EVAL, PRIOR_ACCURACY, REPORT, EvalConfig, evaluate_run
from infosft.analysis.minitask import make_prior
from tests.helpers import MATH_ROWS, make_training_run, perturbed, write_jsonl


def test_summary_counts_the_examples_behind_the_change():
    frame = pl.DataFrame({"base_correct": [True, True, False, False, True],
                          "tuned_correct": [True, False, True, False, False]})
    assert accuracy_summary(frame) == {"n": 5, "base": 0.6, "tuned": 0.4,
                                       "delta": 0.4 - 0.6, "lost": 2, "gained": 1}
    assert accuracy_summary(frame.clear())["lost"] == 0


@pytest.mark.slow  # two evaluations, ~35 s each
def test_eval_answers_a_math_prior_set_with_both_models(tmp_path, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    prior = write_jsonl(tmp_path / "prior.jsonl", make_prior(seed=0, n=4))
    run = make_training_run(tmp_path / "tuned", perturbed(tiny_model_dir, 0.05, "layers.1"),
                            tokenizer, base=str(tiny_model_dir), eval_rows=MATH_ROWS[:2])
    evaluate_run(run, EvalConfig(prior_data=[str(prior)], default_prior=False, limit=4,
                                 accuracy_limit=3, max_new_tokens=5), progress=False)
    report = json.loads((run / EVAL / REPORT).read_text())
    acc = pl.read_parquet(run / EVAL / PRIOR_ACCURACY)
    assert acc["reference"].to_list() == [r["response"].split()[0] for r in make_prior(0, 3)]
    summary = report["prior_accuracy"]
    assert {k: summary[k] for k in ("n", "lost", "gained")} == {
        "n": 3, "lost": int((acc["base_correct"] & ~acc["tuned_correct"]).sum()),
        "gained": int((~acc["base_correct"] & acc["tuned_correct"]).sum())}
    # the base model's answers are its greedy continuations, one prompt at a time here
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for row, out in zip(make_prior(0, 3), acc["base_output"].to_list()):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            new = base.generate(ids, max_new_tokens=5, do_sample=False,
                                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        assert out == tokenizer.decode(new, skip_special_tokens=True).split("<|im_end|>")[0]


@pytest.mark.slow
def test_a_prior_set_without_answers_has_no_prior_accuracy(tmp_path, tiny_model_dir, tokenizer):
    run = make_training_run(tmp_path / "tuned", perturbed(tiny_model_dir, 0.05, "layers.1"),
                            tokenizer, base=str(tiny_model_dir), eval_rows=MATH_ROWS[:2])
    evaluate_run(run, EvalConfig(limit=3, accuracy_limit=2, max_new_tokens=4), progress=False)
    report = json.loads((run / EVAL / REPORT).read_text())
    assert report["prior_accuracy"] is None  # the bundled prior set is questions of fact
    assert not (run / EVAL / PRIOR_ACCURACY).exists()
