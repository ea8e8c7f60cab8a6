"""infosft.trainers with the real TRL and a real (tiny) model: each step-1 loss is checked
against ``sum(w * -logp) / N`` written out here from a float64 forward with full logits,
per example (no padding), with the weights of infosft.weights."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch

from tests.helpers import (IGNORE, ROOT, SAMPLE_RUN, ForwardCount, hf_args, make,
                           n_targets, sft_args, step_loss)

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

from transformers import AutoModelForCausalLM
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from infosft.trainers import WeightedCollator, WeightedSFTTrainer, WeightedTrainer
from infosft.weights import token_weights

# (scheme, knobs) covering every scheme; InfoSFT by P and by C; ProFit deterministic and seeded.
SCHEMES = [("sft", {}), ("dft", {}), ("infosft", {}), ("infosft", {"C": 1.0}),
           ("profit", {}), ("profit", {"direction": "middle", "threshold": (0.2, 0.9)}),
           ("profit", {"direction": "random", "threshold": 0.3, "seed": 7})]
# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def export_path(tmp_path_factory):
    """The sample run (scored by the default model, same tokenizer) exported with InfoSFT."""
    from infosft.analysis.export import export_weighted

    return export_weighted(SAMPLE_RUN, tmp_path_factory.mktemp("export") / "w.parquet", "infosft")


def load_export(path, n):
    return datasets.load_dataset("parquet", data_files=str(path))["train"].select(range(n))


# ---------------------------------------------------------------- the reference


@torch.no_grad()
def target_logp64(model64, ex):
    """``(T - 1,)`` float64 ``log p(token t + 1 | ..t)`` of one example alone, and its mask."""
    ids = torch.tensor(ex["input_ids"])
    labels = torch.tensor(ex["labels"])[1:]
    logsm = model64(ids[None]).logits[0, :-1].double().log_softmax(-1)
    return logsm.gather(1, ids[1:, None]).squeeze(1), labels != IGNORE


def reference_loss(model, batches, scheme, knobs, mode="online", layout="padded", calls=0):
    """The loss of one optimizer step, written out: ``sum(w * -logp) / N`` over its
    micro-batches (lists of examples, in order), N = every supervised token of the step,
    zero-weight ones included.

    ProFit-random draws one pattern per micro-batch, the k-th of the run seeded
    ``seed + k`` (``calls`` = micro-batches trained before this step), over the batch
    as laid out: ``padded`` (B, longest) or ``flat`` (1, sum of lengths), position t of
    an example predicting its token t + 1.
    """
    model64 = copy.deepcopy(model).double().eval()
    n_all = sum(int((torch.tensor(ex["labels"][1:]) != IGNORE).sum()) for b in batches for ex in b)
    total = torch.zeros((), dtype=torch.float64)
    for k, batch in enumerate(batches):
        lengths = [len(ex["input_ids"]) for ex in batch]
        if knobs.get("direction") == "random":
            shape = (len(batch), max(lengths)) if layout == "padded" else (1, sum(lengths))
            keep = token_weights(torch.zeros(shape), "profit",
                                 **{**knobs, "seed": knobs["seed"] + calls + k})
        for b, ex in enumerate(batch):
            logp, mask = target_logp64(model64, ex)
            if mode == "static":
                w = torch.tensor(ex["weights"][1:], dtype=torch.float64)
            elif knobs.get("direction") == "random":
                start = 0 if layout == "padded" else sum(lengths[:b])
                row = keep[b] if layout == "padded" else keep[0]
                w = row[start:start + len(logp)].double()
            else:
                w = token_weights(logp, scheme, **knobs).double()
            total = total + (w * -logp)[mask].sum()
    return float(total / n_all)


# ---------------------------------------------------------------- import without TRL


@pytest.mark.slow
def test_without_trl_the_module_imports_and_the_sft_trainer_says_how_to_get_it():
    code = ("import sys; sys.modules['trl'] = None\n"
            "import infosft.trainers as t\n"
            "assert t.WeightedTrainer and t.WeightedCollator\n"
            "try:\n"
            "    from infosft.trainers import WeightedSFTTrainer\n"
            "except Exception as e:\n"
            "    print(type(e).__name__ + ': ' + str(e))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("InfosftError: WeightedSFTTrainer needs TRL: "
                                  "pip install 'infosft[trl]'")


# ---------------------------------------------------------------- collator


@pytest.mark.parametrize("kw", [{}, {"pad_to_multiple_of": 8}, {"return_position_ids": True},
                                {"padding_free": True},
                                {"padding_free": True, "pad_to_multiple_of": 8}])
def test_collator_emits_trls_batch_plus_aligned_weights(examples, kw):
    ours = WeightedCollator(2, **kw)(examples)
    theirs = DataCollatorForLanguageModeling(pad_token_id=2, **kw)(
        [{k: v for k, v in ex.items() if k != "weights"} for ex in examples])
    assert set(ours) == set(theirs) | {"weights"}
    for key, value in theirs.items():
        assert torch.equal(torch.as_tensor(ours[key]), torch.as_tensor(value)), key
    # weights sit exactly where their tokens sit: where a label is supervised, the weight
    # is its example's weight for that token; 0 wherever nothing is supervised
    w, labels = ours["weights"], ours["labels"]
    assert w.dtype == torch.float32 and w.shape == labels.shape
    if kw.get("padding_free"):
        flat = [x for ex in examples for x in ex["weights"]]
        expect = torch.tensor(flat + [0.0] * (w.shape[1] - len(flat)))[None]
    else:
        expect = torch.zeros_like(w)
        for b, ex in enumerate(examples):
            expect[b, :len(ex["weights"])] = torch.tensor(ex["weights"])
    supervised = labels != IGNORE
    assert torch.equal(w[supervised], expect[supervised])
    assert not w[~supervised].any()


def test_collator_names_the_example_whose_weights_do_not_line_up(examples):
    bad = [examples[0], {**examples[1], "weights": examples[1]["weights"][:-3]}]
    with pytest.raises(ValueError, match="example 1 of the batch: 15 weights for 18 input_ids"):
        WeightedCollator(2)(bad)


def test_collator_positions_restart_per_packed_document():
    batch = WeightedCollator(0, padding_free=True)(
        [{"input_ids": [5, 6, 7, 8, 9], "seq_lengths": [2, 3], "weights": [1.0] * 5}])
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE, 6, IGNORE, 8, 9]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 2, 5]
    assert batch["weights"].tolist() == [[0.0, 1.0, 0.0, 1.0, 1.0]]


# ---------------------------------------------------------------- WeightedSFTTrainer


@pytest.mark.parametrize("scheme,knobs", SCHEMES)
def test_sft_online_step_loss_is_the_weighted_nll_with_one_forward_per_micro_batch(
        model, tokenizer, examples, tmp_path, scheme, knobs):
    expected = reference_loss(model, [examples[:2], examples[2:]], scheme, knobs)
    trainer = make(WeightedSFTTrainer, model, args=sft_args(tmp_path),
                   train_dataset=datasets.Dataset.from_list(examples),
                   processing_class=tokenizer, scheme=scheme, **knobs)
    assert trainer._fused  # TRL 1.16's fused LM head is what runs
    count = ForwardCount(trainer.model)
    trainer.train()
    assert count.n == 2  # one forward per micro-batch, no second one for the logits
    # N is the whole step's supervised tokens, both micro-batches, zero-weight ones included
    assert [n for _, n in trainer.micro] == [n_targets(examples)] * 2
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert expected > 0


def test_sft_trainer_without_a_fused_head_takes_the_chunked_path(model, tokenizer, examples,
                                                                 tmp_path):
    """As on a TRL whose SFTTrainer adds no fused LM head: the logits' forward, same loss."""
    knobs = {"direction": "random", "threshold": 0.3, "seed": 7}
    expected = reference_loss(model, [examples[:2], examples[2:]], "profit", knobs)
    trainer = make(WeightedSFTTrainer, model, args=sft_args(tmp_path),
                   train_dataset=datasets.Dataset.from_list(examples),
                   processing_class=tokenizer, scheme="profit", **knobs)
    trainer._fused = False
    count = ForwardCount(trainer.model)
    trainer.train()
    assert count.n == 2
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("padding_free", [False, True])
def test_sft_static_step_loss_uses_the_datasets_weights(model, tokenizer, examples, tmp_path,
                                                        padding_free):
    # scheme "dft" labels the run only: static weights are the data's, whatever the scheme
    expected = reference_loss(model, [examples[:2], examples[2:]], "dft", {}, mode="static")
    trainer = make(WeightedSFTTrainer, model, args=sft_args(tmp_path, padding_free=padding_free),
                   train_dataset=datasets.Dataset.from_list(examples),
                   processing_class=tokenizer, scheme="dft", mode="static")
    count = ForwardCount(trainer.model)
    trainer.train()
    assert count.n == 2
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)
    # the same data trained online gives another loss: the weights did come from the data
    assert expected != pytest.approx(reference_loss(model, [examples[:2], examples[2:]], "dft", {}),
                                     rel=1e-2)


@pytest.mark.parametrize("scheme,knobs", [("infosft", {}),
                                          ("profit", {"direction": "random", "threshold": 0.3,
                                                      "seed": 3})])
def test_sft_padding_free_step_loss_keeps_examples_apart(model, tokenizer, examples, tmp_path,
                                                         scheme, knobs):
    # The reference runs each example alone: attention or a prediction across an example
    # boundary in the flattened row would change the loss.
    expected = reference_loss(model, [examples[:2], examples[2:]], scheme, knobs, layout="flat")
    trainer = make(WeightedSFTTrainer, model, args=sft_args(tmp_path, padding_free=True),
                   train_dataset=datasets.Dataset.from_list(examples),
                   processing_class=tokenizer, scheme=scheme, **knobs)
    count = ForwardCount(trainer.model)
    trainer.train()
    assert count.n == 2
    assert [n for _, n in trainer.micro] == [n_targets(examples)] * 2
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)


def test_sft_trainer_warns_nothing_and_trls_compute_loss_func_costs_a_forward(
        model, tokenizer, examples, tmp_path):
    from infosft.loss import make_loss_func

    data = datasets.Dataset.from_list(examples)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ours = WeightedSFTTrainer(model=model, args=sft_args(tmp_path / "a"), train_dataset=data,
                                  processing_class=tokenizer, scheme="dft")
        count = ForwardCount(ours.model)
        ours.train()
    ours_forwards = count.n
    future = [str(w.message) for w in seen if issubclass(w.category, FutureWarning)
              and ("trl" in w.filename or "infosft" in w.filename
                   or "compute_loss" in str(w.message))]
    assert future == []
    # The control: the counter and the warning capture do see TRL's compute_loss_func path.
    other = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    with pytest.warns(FutureWarning, match="compute_loss_func"):
        theirs = SFTTrainer(model=other, args=sft_args(tmp_path / "b"), train_dataset=data,
                            processing_class=tokenizer, compute_loss_func=make_loss_func("dft"))
    count = ForwardCount(theirs.model)
    theirs.train()
    assert (ours_forwards, count.n) == (2, 4)


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_static_weights_survive_trls_truncation(model, tokenizer, export_path, tmp_path, mode):
    source = load_export(export_path, 4)
    max_length = 120 if mode == "keep_start" else 60
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # keep_end is deprecated in TRL
        args = sft_args(tmp_path, max_length=max_length, truncation_mode=mode)
    trainer = make(WeightedSFTTrainer, model, args=args, train_dataset=source,
                   processing_class=tokenizer, mode="static")
    cut = slice(None, max_length) if mode == "keep_start" else slice(-max_length, None)
    by_id = {ex["example_id"]: ex for ex in source}
    kept = list(trainer.train_dataset)
    assert len(kept) >= 2 and any(len(by_id[ex["example_id"]]["input_ids"]) > max_length
                                  for ex in kept)
    for ex in kept:
        full = by_id[ex["example_id"]]
        assert len(ex["weights"]) == len(ex["labels"]) == len(ex["input_ids"]) <= max_length
        assert ex["input_ids"] == full["input_ids"][cut]
        assert ex["weights"] == pytest.approx(full["weights"][cut])
    if mode == "keep_end":
        return  # the alignment is what matters; one training run below suffices
    batches = [kept[:2], kept[2:4]]
    expected = reference_loss(model, batches, "infosft", {}, mode="static")
    trainer.train()
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)


def test_static_mode_refuses_what_would_lose_the_weights(model, tokenizer, examples, tmp_path):
    from infosft.errors import InfosftError

    data = datasets.Dataset.from_list(examples)
    with pytest.raises(InfosftError, match="needs a 'weights' column"):
        WeightedSFTTrainer(model=model, args=sft_args(tmp_path), processing_class=tokenizer,
                           train_dataset=data.remove_columns("weights"), mode="static")
    with pytest.raises(InfosftError, match="packing"):
        WeightedSFTTrainer(model=model, args=sft_args(tmp_path, packing=True, max_length=64),
                           processing_class=tokenizer, train_dataset=data, mode="static")
    with pytest.raises(InfosftError, match="computes the weighted loss itself"):
        WeightedSFTTrainer(model=model, args=sft_args(tmp_path), processing_class=tokenizer,
                           train_dataset=data, compute_loss_func=lambda *a, **k: 0)
    with pytest.raises(ValueError, match="P must be in"):
        WeightedSFTTrainer(model=model, args=sft_args(tmp_path), processing_class=tokenizer,
                           train_dataset=data, scheme="infosft", P=1.5)


@pytest.mark.parametrize("with_metrics", [False, True])
def test_sft_eval_loss_is_the_mean_token_nll(model, tokenizer, examples, tmp_path, with_metrics):
    """Whatever the scheme; with compute_metrics the loss comes from the logits' forward."""
    # one eval batch: its mean token NLL is the sft loss of the whole set
    expected = reference_loss(model, [examples], "sft", {})
    seen = []
    trainer = WeightedSFTTrainer(model=model, args=sft_args(tmp_path, per_device_eval_batch_size=4),
                                 train_dataset=datasets.Dataset.from_list(examples),
                                 eval_dataset=datasets.Dataset.from_list(examples),
                                 processing_class=tokenizer, scheme="profit",
                                 compute_metrics=(lambda p: seen.append(p) or {})
                                 if with_metrics else None)
    count = ForwardCount(trainer.model)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert count.n == 1
    if with_metrics:
        assert seen[0].predictions.shape[:2] == (4, max(len(ex["input_ids"]) for ex in examples))


def test_sft_trainer_with_lora_uses_the_fused_head(model, tokenizer, examples, tmp_path):
    """LoRA starts as the identity (B = 0): step 1 is the base model's weighted NLL."""
    from peft import LoraConfig

    expected = reference_loss(model, [examples[:2], examples[2:]], "infosft", {})
    trainer = make(WeightedSFTTrainer, model, args=sft_args(tmp_path),
                   train_dataset=datasets.Dataset.from_list(examples), processing_class=tokenizer,
                   peft_config=LoraConfig(r=4, target_modules="all-linear"), scheme="infosft")
    assert trainer._fused
    count = ForwardCount(trainer.model)
    trainer.train()
    assert count.n == 2
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)


def test_logs_carry_the_weight_stats(model, tokenizer, examples, tmp_path):
    trainer = WeightedSFTTrainer(model=model, args=sft_args(tmp_path, max_steps=2),
                                 train_dataset=datasets.Dataset.from_list(examples),
                                 processing_class=tokenizer, mode="static")
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    w = [x for ex in examples for x, lab in zip(ex["weights"][1:], ex["labels"][1:])
         if lab != IGNORE]
    assert [h["mean_weight"] for h in logs] == pytest.approx([sum(w) / len(w)] * 2)
    assert [h["zero_weight_share"] for h in logs] == pytest.approx(
        [sum(x == 0 for x in w) / len(w)] * 2)
    assert {"entropy", "mean_token_accuracy", "num_tokens"} <= set(logs[0])  # TRL's own


# ---------------------------------------------------------------- WeightedTrainer


@pytest.mark.parametrize("scheme,knobs", [("infosft", {}),
                                          ("profit", {"direction": "random", "threshold": 0.3,
                                                      "seed": 5})])
def test_weighted_trainer_matches_the_stock_trainer_with_the_loss_func(
        model, tokenizer, examples, tmp_path, scheme, knobs):
    """Same micro-batch losses and the same updated weights as the stock Trainer (its own
    compute_loss and gradient-accumulation handling, TRL's collator) given make_loss_func
    as compute_loss_func, over 2 steps of 2 accumulated micro-batches (ProFit-random's call
    count too). ``infosft train`` runs WeightedTrainer, so this pins its numbers as well."""
    from transformers import Trainer

    from infosft.loss import make_loss_func

    data = datasets.Dataset.from_list([{k: v for k, v in ex.items() if k != "weights"}
                                       for ex in examples])
    stock_model, start = copy.deepcopy(model), copy.deepcopy(model)
    args = hf_args(tmp_path, max_steps=2, remove_unused_columns=False)
    stock = make(Trainer, stock_model, args=args, train_dataset=data,
                 data_collator=DataCollatorForLanguageModeling(pad_token_id=2),
                 compute_loss_func=make_loss_func(scheme, **knobs))
    ours = make(WeightedTrainer, model, args=args, train_dataset=data,
                processing_class=tokenizer, scheme=scheme, **knobs)
    stock.train()
    ours.train()
    assert len(ours.micro) == 4
    assert [n for _, n in ours.micro] == [n for _, n in stock.micro] == [n_targets(examples)] * 4
    assert [loss for loss, _ in ours.micro] == pytest.approx([loss for loss, _ in stock.micro],
                                                             rel=1e-6)
    for (name, a), b in zip(model.named_parameters(), stock_model.parameters()):
        assert torch.allclose(a, b, atol=1e-7), name
    # the control: both did train (the weights moved from the start)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), start.parameters()))


def test_weighted_trainer_static_on_an_export(model, tokenizer, export_path, tmp_path):
    """An export straight from datasets (extra text columns, remove_unused_columns on):
    the weights reach the loss."""
    source = load_export(export_path, 4)
    expected = reference_loss(model, [list(source)[:2], list(source)[2:]], "sft", {},
                              mode="static")
    trainer = make(WeightedTrainer, model, args=hf_args(tmp_path), train_dataset=source,
                   processing_class=tokenizer, mode="static")
    count = ForwardCount(trainer.model)
    trainer.train()
    assert count.n == 2
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)


def test_weighted_trainer_padding_free(model, tokenizer, examples, tmp_path):
    expected = reference_loss(model, [examples[:2], examples[2:]], "dft", {}, layout="flat")
    trainer = make(WeightedTrainer, model, args=hf_args(tmp_path),
                   train_dataset=datasets.Dataset.from_list(examples),
                   data_collator=WeightedCollator(2, padding_free=True), scheme="dft")
    trainer.train()
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)


def test_resumed_run_draws_the_same_profit_random_drops(model, examples, tmp_path):
    knobs = {"direction": "random", "threshold": 0.5, "seed": 11}
    data = datasets.Dataset.from_list(examples)
    start = copy.deepcopy(model)
    args = hf_args(tmp_path, max_steps=2, gradient_accumulation_steps=1, save_strategy="steps",
                   save_steps=1)
    whole = make(WeightedTrainer, model, args=args, train_dataset=data, scheme="profit", **knobs)
    whole.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    resumed = make(WeightedTrainer, start, args=args, train_dataset=data, scheme="profit", **knobs)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert len(resumed.micro) == 1  # step 2 only
    after_1 = AutoModelForCausalLM.from_pretrained(checkpoint)
    expected = reference_loss(after_1, [examples[2:]], "profit", knobs, calls=1)
    assert resumed.micro[0][0] == pytest.approx(expected, rel=1e-5)
    assert resumed.micro[0][0] == pytest.approx(whole.micro[1][0], rel=1e-6)
    # the control: the draw a fresh count would make gives another loss
    assert expected != pytest.approx(reference_loss(after_1, [examples[2:]], "profit", knobs),
                                     rel=1e-3)


# ---------------------------------------------------------------- the default model


@pytest.fixture(scope="module")
def default_case(default_model, export_path):
    """The sample data without its weights and its online InfoSFT step-1 loss, written out
    (InfoSFT draws nothing, so padded and flattened batches share it)."""
    base, _, _ = default_model
    source = load_export(export_path, 4).remove_columns("weights")
    rows = list(source)
    return source, reference_loss(base, [rows[:2], rows[2:]], "infosft", {})


@pytest.mark.slow
@pytest.mark.parametrize("padding_free", [False, True])
def test_default_model_online_infosft_step_loss(default_model, default_case, tmp_path,
                                                padding_free):
    """The real model (real, spread-out q) on the sample data: TRL's fused head gives the
    weighted NLL of a float64 forward, padded or flattened."""
    base, tokenizer, _ = default_model
    source, expected = default_case
    trainer = make(WeightedSFTTrainer, copy.deepcopy(base), train_dataset=source,
                   processing_class=tokenizer,
                   args=sft_args(tmp_path, padding_free=padding_free, gradient_checkpointing=False),
                   scheme="infosft")
    count = ForwardCount(trainer.model)
    trainer.train()
    assert count.n == 2
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-4)


def test_moe_load_balancing_loss_is_added_as_trl_adds_it(tokenizer, examples, tmp_path):
    """A tiny Mixtral: step 1 is the weighted NLL plus coef * the mean of the micro-batches'
    load-balancing losses (each from a plain forward of that padded micro-batch)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.5,
                           pad_token_id=2, tie_word_embeddings=True)
    config._experts_implementation = "eager"  # the grouped GEMM has no float64 (the reference)
    model = MixtralForCausalLM(config)
    batches = [examples[:2], examples[2:]]
    collate = WeightedCollator(2)
    with torch.no_grad():
        aux = [model(**{k: v for k, v in collate(b).items()
                        if k in ("input_ids", "attention_mask")},
                     output_router_logits=True).aux_loss for b in batches]
    expected = reference_loss(model, batches, "dft", {}) + 0.5 * float(sum(aux)) / 2
    trainer = make(WeightedSFTTrainer, model, args=sft_args(tmp_path),
                   train_dataset=datasets.Dataset.from_list(examples), processing_class=tokenizer,
                   scheme="dft")
    assert trainer.aux_loss_enabled
    trainer.train()
    assert step_loss(trainer) == pytest.approx(expected, rel=1e-5)
    assert float(sum(aux)) * 0.5 / 2 > 1e-3 * expected  # the aux term is there to see
