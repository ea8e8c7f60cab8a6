"""Training with the schemes that read more than each token's log-prob (issue 18): EAFT
(the trained model's top-20 entropy, same forward) and excess / Rho-1 (a reference model,
one no-grad forward per micro-batch), in both trainers; their TrainConfig fields
(``reference``, ``knobs``) and a user's ``module:function`` scheme; one short real run
of each on the default model (slow)."""

from __future__ import annotations

import copy
import json
import math
import sys
import textwrap

import pytest
import torch

datasets = pytest.importorskip("datasets")
pytest.importorskip("trl")

from transformers import AutoModelForCausalLM  # noqa: E402

from infosft import train_status as ts  # noqa: E402
from infosft.errors import InfosftError  # noqa: E402
from infosft.train_config import ConfigError, resolve, resume_config  # noqa: E402
from infosft.trainers import WeightedCollator, WeightedSFTTrainer, WeightedTrainer  # noqa: E402
from tests.helpers import (IGNORE, SAMPLE, ForwardCount, hf_args, make,  # noqa: E402
                           n_targets, sft_args, step_loss, write_jsonl)


@pytest.fixture
def reference(tiny_model_dir):
    """Another model with the same tokenizer: the tiny random Llama, not scaled."""
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


@torch.no_grad()
def logits64(model, ex):
    """``(T - 1, V)`` float64 logits of one example alone, predicting tokens 1.., and the
    targets and mask."""
    ids = torch.tensor(ex["input_ids"])
    labels = torch.tensor(ex["labels"])[1:]
    logits = copy.deepcopy(model).double().eval()(ids[None]).logits[0, :-1]
    return logits, ids[1:], labels != IGNORE


def eaft_step(model, batches, alpha):
    """LLaMA-Factory's EAFT loss of one optimizer step: per-token CE times
    ``(H_top20 / 3) ** alpha``, summed over the step, divided by its supervised tokens."""
    total, n = 0.0, 0
    for batch in batches:
        for ex in batch:
            logits, tgt, mask = logits64(model, ex)
            ce = -logits.log_softmax(-1).gather(1, tgt[:, None]).squeeze(1)
            p = logits.topk(20, dim=-1).values.softmax(-1)
            w = (-(p * p.log()).sum(-1) / 3.0) ** alpha
            total += float((ce * w)[mask].sum())
            n += int(mask.sum())
    return total / n


def excess_step(model, ref, batches, keep, per):
    """Rho-1 of one optimizer step: in each micro-batch (per=all) or each example, keep
    the ceil(keep * n) supervised tokens with the largest logp_ref - logp."""
    total, n_all = 0.0, 0
    for batch in batches:
        groups = []
        for ex in batch:
            logits, tgt, mask = logits64(model, ex)
            ref_logits, _, _ = logits64(ref, ex)
            lp = logits.log_softmax(-1).gather(1, tgt[:, None]).squeeze(1)[mask]
            lr = ref_logits.log_softmax(-1).gather(1, tgt[:, None]).squeeze(1)[mask]
            groups.append([(float(b - a), float(-a)) for a, b in zip(lp, lr)])
            n_all += len(groups[-1])
        if per == "all":
            groups = [[t for g in groups for t in g]]
        for g in groups:
            g.sort(key=lambda x: -x[0])
            total += sum(nll for _, nll in g[:math.ceil(keep * len(g) - 1e-9)])
    return total / n_all


def no_weights(examples):
    return datasets.Dataset.from_list([{k: v for k, v in ex.items() if k != "weights"}
                                       for ex in examples])


# ---------------------------------------------------------------- EAFT


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_weighted_trainer_online_eaft_is_llamafactorys_loss(model, examples, tmp_path, alpha):
    expected = eaft_step(model, [examples[:2], examples[2:]], alpha)
    trainer = make(WeightedTrainer, model, args=hf_args(tmp_path), train_dataset=no_weights(
        examples), scheme="eaft", alpha=alpha)
    assert trainer._target_head  # the entropy comes from infosft's target head
    count = ForwardCount(trainer.model)
    trainer.train()
    assert count.n == 2  # one forward per micro-batch: the entropy is of that same pass
    assert [n for _, n in trainer.micro] == [n_targets(examples)] * 2
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)
    # the control: plain SFT of the same step is another loss
    assert expected != pytest.approx(eaft_step(model, [examples[:2], examples[2:]], 0.0),
                                     rel=1e-2)


def test_sft_trainer_eaft_leaves_trls_fused_head_for_the_target_head(model, tokenizer, examples,
                                                                     tmp_path):
    expected = eaft_step(model, [examples[:2], examples[2:]], 1.0)
    trainer = make(WeightedSFTTrainer, model, args=sft_args(tmp_path),
                   train_dataset=no_weights(examples), processing_class=tokenizer,
                   scheme="eaft", knobs={"alpha": 1.0})
    assert not trainer._fused and trainer._target_head  # TRL's head has no top-20 entropy
    count = ForwardCount(trainer.model)
    trainer.train()
    assert count.n == 2
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- excess (Rho-1)


@pytest.mark.parametrize("keep,per,padding_free", [(0.6, "all", False), (0.4, "example", False),
                                                   (0.4, "example", True)])
def test_weighted_trainer_online_excess_against_a_reference(model, reference, examples,
                                                            tmp_path, keep, per, padding_free):
    expected = excess_step(model, reference, [examples[:2], examples[2:]], keep, per)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    kw = {"data_collator": WeightedCollator(2, padding_free=True)} if padding_free else {}
    trainer = make(WeightedTrainer, model, args=hf_args(tmp_path), train_dataset=no_weights(
        examples), scheme="excess", keep=keep, per=per, reference_model=reference, **kw)
    count, ref_count = ForwardCount(trainer.model), ForwardCount(reference)
    trainer.train()
    assert count.n == 2 and ref_count.n == 2  # one forward of each per micro-batch
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)
    # the reference is frozen: no gradient, not trained, left in eval mode
    assert all(p.grad is None and not p.requires_grad for p in reference.parameters())
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert not reference.training


def test_excess_selection_differs_per_example_and_over_the_batch(model, reference, examples):
    batches = [examples[:2], examples[2:]]
    assert excess_step(model, reference, batches, 0.4, "all") != pytest.approx(
        excess_step(model, reference, batches, 0.4, "example"), rel=1e-3)


def test_sft_trainer_online_excess_keeps_trls_fused_head(model, reference, tokenizer, examples,
                                                         tmp_path):
    expected = excess_step(model, reference, [examples[:2], examples[2:]], 0.5, "all")
    trainer = make(WeightedSFTTrainer, model, args=sft_args(tmp_path),
                   train_dataset=no_weights(examples), processing_class=tokenizer,
                   scheme="excess", keep=0.5, reference_model=reference)
    assert trainer._fused
    count, ref_count = ForwardCount(trainer.model), ForwardCount(reference)
    trainer.train()
    assert count.n == 2 and ref_count.n == 2
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)
    assert all(p.grad is None for p in reference.parameters())


def test_excess_needs_a_reference_model(model, examples, tmp_path):
    with pytest.raises(InfosftError, match="reference_model="):
        WeightedTrainer(model=model, args=hf_args(tmp_path), train_dataset=no_weights(examples),
                        scheme="excess")


def test_evaluation_runs_no_reference(model, reference, examples, tmp_path):
    trainer = WeightedTrainer(model=model, args=hf_args(tmp_path),
                              eval_dataset=no_weights(examples), scheme="excess",
                              reference_model=reference)
    ref_count = ForwardCount(reference)
    assert trainer.evaluate()["eval_loss"] > 0
    assert ref_count.n == 0


# ---------------------------------------------------------------- TrainConfig


def cfg_values(tmp_path, **kw):
    data = tmp_path / "d.jsonl"
    if not data.exists():
        data.write_text('{"text": "hello"}\n')
    return {"data": str(data), "out": str(tmp_path / "run"), **kw}


def test_config_reference_is_required_by_excess_online(tmp_path):
    with pytest.raises(ConfigError, match="'reference'") as e:
        resolve(cfg_values(tmp_path, scheme="excess"))
    assert e.value.field == "reference" and "\n" not in str(e.value)
    assert resolve(cfg_values(tmp_path, scheme="excess", mode="static")).reference is None
    cfg = resolve(cfg_values(tmp_path, scheme="excess", reference="default",
                             knobs={"keep": 0.5, "per": "example"}))
    assert cfg.knob_args()["keep"] == 0.5
    assert cfg.resolved_knobs() == {"keep": 0.5, "per": "example"}


def test_config_scheme_and_knobs_are_validated_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="config field 'scheme'.*unknown scheme 'nope'") as e:
        resolve(cfg_values(tmp_path, scheme="nope"))
    assert e.value.field == "scheme"
    with pytest.raises(ConfigError, match="config field 'knobs'.*alpha") as e:
        resolve(cfg_values(tmp_path, scheme="eaft", knobs={"alpha": -1}))
    assert e.value.field == "knobs"
    with pytest.raises(ConfigError, match="unknown knob 'gamma'"):
        resolve(cfg_values(tmp_path, scheme="eaft", knobs={"gamma": 1}))
    with pytest.raises(ConfigError, match="C is a config field of its own"):
        resolve(cfg_values(tmp_path, knobs={"C": 1.0}))
    with pytest.raises(ConfigError, match="'knobs'"):
        resolve(cfg_values(tmp_path, knobs=[1, 2]))
    cfg = resolve(cfg_values(tmp_path, scheme="eaft", knobs={"alpha": 0.5}))
    assert cfg.resolved_knobs() == {"alpha": 0.5}
    # knobs are the chosen scheme's: another scheme's is an error, not silently ignored
    # (whatever other schemes a process has registered)
    with pytest.raises(ConfigError, match="unknown knob 'alpha' for scheme 'infosft'"):
        resolve(cfg_values(tmp_path, knobs={"alpha": 0.5}))


def test_resume_keeps_the_reference_and_knobs(tmp_path):
    stored = vars(resolve(cfg_values(tmp_path, scheme="excess", reference="default")))
    with pytest.raises(InfosftError, match="'reference'"):
        resume_config(stored, overrides={"reference": str(tmp_path)})
    with pytest.raises(InfosftError, match="'knobs'"):
        resume_config(stored, overrides={"knobs": {"keep": 0.3}})
    assert resume_config(stored, overrides={"logging_steps": 2}).reference == "default"


def test_the_cli_has_reference_but_no_knobs_flag():
    from infosft.app.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--reference", "m", "--data", "d", "--out", "o"])
    assert args.reference == "m" and not hasattr(args, "knobs")  # a config-file key only
    train_help = next(a for a in parser._subparsers._group_actions[0].choices.values()
                      if "--reference" in a.format_help())
    assert "--knobs" not in train_help.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--knobs", "x"])


@pytest.fixture
def user_scheme(tmp_path, monkeypatch):
    (tmp_path / "trainers_user_scheme.py").write_text(textwrap.dedent('''
        def focal(logp, gamma=2.0):
            """w = (1 - q) ** gamma"""
            return (1 - logp.exp()) ** gamma
    '''))
    monkeypatch.chdir(tmp_path)
    yield "trainers_user_scheme:focal"
    sys.modules.pop("trainers_user_scheme", None)


def test_a_user_scheme_passes_the_config_and_trains(user_scheme, model, examples, tmp_path):
    cfg = resolve(cfg_values(tmp_path, scheme=user_scheme, knobs={"gamma": 1.5}))
    assert cfg.scheme == user_scheme and cfg.resolved_knobs() == {"gamma": 1.5}
    with pytest.raises(ConfigError, match="gamma"):
        resolve(cfg_values(tmp_path, scheme=user_scheme, knobs={"gamma": "x"}))
    trainer = make(WeightedTrainer, model, args=hf_args(tmp_path), train_dataset=no_weights(
        examples), scheme=user_scheme, knobs=cfg.knobs)
    expected_total, n = 0.0, 0
    for ex in examples:
        logits, tgt, mask = logits64(model, ex)
        lp = logits.log_softmax(-1).gather(1, tgt[:, None]).squeeze(1)[mask]
        expected_total += float(((1 - lp.exp()) ** 1.5 * -lp).sum())
        n += int(mask.sum())
    trainer.train()
    assert trainer.weighted_loss.knobs == {"gamma": 1.5}
    assert step_loss(trainer) == pytest.approx(expected_total / n, rel=1e-5)


# ---------------------------------------------------------------- real runs


@pytest.mark.slow
@pytest.mark.parametrize("scheme,extra", [("eaft", {"knobs": {"alpha": 0.5}}),
                                          ("excess", {"reference": "default"})])
def test_short_run_on_the_default_model(tmp_path, default_dir, scheme, extra):
    """A few LoRA steps of the embedded model on sample rows: eaft, and excess with the
    default model as its own reference (at step 1 every excess is 0, so exactly the keep
    share of each micro-batch is kept); the run records the fields."""
    from infosft.train import train

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:4]]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    if extra.get("reference") == "default":
        extra = {"reference": str(default_dir)}
    cfg = resolve({"data": str(data), "out": str(tmp_path / "run"), "max_steps": 2,
                   "batch_size": 2, "max_length": 128, "logging_steps": 1, "eval_split": 0,
                   "device": "cpu", "lr": 1e-3, "scheme": scheme, **extra})
    run = train(cfg)
    assert ts.read_status(run)["state"] == "finished"
    lines = [m for m in ts.read_metrics(run) if "loss" in m]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["loss"] > 0 for m in lines)
    if scheme == "excess":
        assert lines[0]["mean_weight"] == pytest.approx(0.6, abs=0.05)
    else:
        assert 0 < lines[0]["mean_weight"] < 1
    stored = (run / ts.CONFIG).read_text()
    assert (f"reference: {default_dir}" if scheme == "excess" else "alpha: 0.5") in stored
