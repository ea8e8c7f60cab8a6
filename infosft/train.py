"""Weighted fine-tuning with the Hugging Face Trainer: ``train(cfg) -> RUN/final``.

The trainer is :class:`infosft.trainers.WeightedTrainer`, the public class, with the loss
of :mod:`infosft.loss` (online weights from the trained model's own q, or static weights
from an exported dataset); everything else is the stock Trainer, so
``accelerate launch -m infosft train ...`` and ``torchrun`` work unchanged (DDP, FSDP,
DeepSpeed). This module builds the model and runs the Trainer; along its seams:

* :mod:`infosft.train_data`: records or an export -> examples, the eval split, the checks
  before a model loads;
* :mod:`infosft.train_callbacks`: ``RunWriter`` (status and metrics every step) and
  ``StopRequest`` (SIGTERM / SIGINT -> checkpoint and stop);
* :mod:`infosft.train_run`: the run directory's checks, starting files, model info and log.

Their public names are importable from here too (``infosft.train.RunWriter``, ...).

A scheme that compares with a reference model (``excess``, online) gets ``cfg.reference``
loaded once, by the same loader as the base model, frozen, and run without gradient on
each micro-batch beside the trained model (:func:`build_reference`).

The run directory layout and the status/metrics files are defined in
:mod:`infosft.train_status`. ``eval_loss`` is always the plain mean token NLL (the
``sft`` loss) of the held-out examples, whatever the training scheme, so that runs
with different schemes are comparable; it is averaged per eval batch (weighted by the
batch's examples), as the Trainer averages losses.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from infosft import runlock
from infosft import train_status as ts
from infosft.atomic import usual_permissions
from infosft.data import TARGET_RULE
from infosft.errors import InfosftError
from infosft.fast_dropout import speed_up_lora_dropout
from infosft.loss import WeightedLoss
from infosft.packed_linear import packed_linears
from infosft.train_callbacks import RunWriter, StopRequest, close_process_group
from infosft.train_config import TrainConfig, result_values
from infosft.train_data import (TRUNCATED, ExampleDataset, TrainData, check_static_source,
                                check_token_ids, exported_examples, is_exported, load_data,
                                raw_examples, read_source, split_indices)
from infosft.train_run import (attach_log, check_inputs_outside, check_resume_source,
                               check_run_dir, detach_log, is_main_process, one_line,
                               start_run_files, write_model_info)
from infosft.trainers import WeightedCollator, WeightedTrainer, pad_id_of
from infosft.varlen_attention import use_varlen_attention

__all__ = ["ExampleDataset", "RunWriter", "StopRequest", "TRUNCATED", "TrainData",
           "build_model", "check_inputs_outside", "check_run_dir", "check_static_source",
           "check_token_ids", "checked_training_args", "exported_examples", "is_exported",
           "load_data", "one_line", "raw_examples", "read_source", "speed_up",
           "split_indices", "train", "training_args", "write_model_info"]

log = logging.getLogger("infosft.train")


# ---------------------------------------------------------------- model


def build_model(cfg: TrainConfig, device: str):
    """The model to train (LoRA-wrapped or full) and its tokenizer, loaded on CPU: the
    Trainer places it on the device of its process."""
    from transformers import set_seed

    from infosft.models import load_model, pick_dtype

    dtype = str(pick_dtype(device, cfg.dtype)).split(".")[-1]
    model, tokenizer, _ = load_model(cfg.model, device="cpu", dtype=dtype,
                                     trust_remote_code=cfg.trust_remote_code)
    model.config.use_cache = False  # no KV cache while training (and with checkpointing)
    if not cfg.lora:
        return model, tokenizer
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise InfosftError("LoRA needs peft: pip install 'infosft[train]' (or set lora: "
                           "false)") from None
    set_seed(cfg.seed)  # the LoRA init
    lora = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules="all-linear")
    model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model, tokenizer


def build_reference(cfg: TrainConfig, device: str, model):
    """The reference model of ``cfg`` (None when the scheme does not read ``logp_ref`` or
    the mode is static), loaded on CPU in the trained model's dtype, frozen, eval mode;
    the trainer moves it to the trained model's device. Its vocabulary must be the base
    model's: the excess compares the same tokens' log-probs."""
    from infosft.models import load_model, pick_dtype
    from infosft.weights import needed_fields

    if cfg.mode != "online" or "logp_ref" not in needed_fields(cfg.scheme):
        if cfg.reference:
            log.warning("reference %s is not used: scheme %s, mode %s reads no reference "
                        "log-probs", cfg.reference, cfg.scheme, cfg.mode)
        return None
    dtype = str(pick_dtype(device, cfg.dtype)).split(".")[-1]
    ref, _, _ = load_model(cfg.reference, device="cpu", dtype=dtype,
                           trust_remote_code=cfg.trust_remote_code)
    ref.config.use_cache = False
    ref.eval().requires_grad_(False)
    n_ref = ref.get_input_embeddings().num_embeddings
    n_model = model.get_input_embeddings().num_embeddings
    if n_ref != n_model:
        raise InfosftError(f"config field 'reference': {cfg.reference} has a vocabulary of "
                           f"{n_ref} tokens, the base model {n_model}: the excess scheme "
                           "compares the same tokens' log-probs (use a model with the base "
                           "model's tokenizer)")
    return ref


def speed_up(model, args, device: str, reference=None) -> bool:
    """What makes a step cheaper without changing its loss; returns whether batches go
    padding-free.

    * Padding-free batches (no compute on padding) with each document's attention alone
      (:mod:`infosft.varlen_attention`), for models on transformers' ``sdpa``.
    * On the CPU, LoRA's dropout masks drawn four elements per random number
      (:mod:`infosft.fast_dropout`).

    (The trainer's target head and the packed frozen weights are the others; see
    :mod:`infosft.target_head`, :mod:`infosft.packed_linear`.) A ``reference`` model
    (excess) gets the same attention; batches go padding-free only if both can.
    """
    padding_free = use_varlen_attention(model)
    if padding_free and reference is not None:
        # the reference reads the same one-row batches: it must keep the documents apart too
        padding_free = use_varlen_attention(reference)
    if padding_free:  # every token of a padding-free batch is real (a pad id may be a token)
        args.include_num_input_tokens_seen = "all"
    drops = speed_up_lora_dropout(model) if device == "cpu" else 0
    log.info("batches %s%s", "padding-free, each document's attention alone" if padding_free
             else f"padded (the model's attention is {model.config._attn_implementation})",
             f"; {drops} LoRA dropouts on fast masks" if drops else "")
    return padding_free


def training_args(cfg: TrainConfig, run_dir: Path, device: str, has_eval: bool):
    from transformers import TrainingArguments

    from infosft.models import pick_dtype

    dtype = pick_dtype(device, cfg.dtype)
    on_cuda = device.startswith("cuda")
    return TrainingArguments(
        output_dir=str(run_dir / ts.CHECKPOINTS),
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
        warmup_steps=float(cfg.warmup_ratio), weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps, logging_strategy="steps",
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        eval_strategy="steps" if (cfg.eval_steps and has_eval) else "no",
        eval_steps=cfg.eval_steps, save_only_model=False, seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=device == "cpu", bf16=on_cuda and dtype == torch.bfloat16,
        fp16=on_cuda and dtype == torch.float16,
        # Only when asked: the names are deprecated (and warn) in newer transformers.
        **({"gradient_checkpointing": True,
            "gradient_checkpointing_kwargs": {"use_reentrant": False}}
           if cfg.gradient_checkpointing else {}),
        report_to=cfg.report_to, dataloader_num_workers=0, remove_unused_columns=False,
        label_names=["labels"], prediction_loss_only=True,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not sys.stdout.isatty(),
    )


def checked_training_args(cfg: TrainConfig, run_dir: Path, device: str, has_eval: bool):
    """:func:`training_args`, with the experiment trackers' callbacks made once: the
    Trainer would find a tracker that is not installed only after the run has started."""
    from transformers.integrations import get_reporting_integration_callbacks

    try:
        args = training_args(cfg, run_dir, device, has_eval)
    except ValueError as e:  # a combination the Trainer refuses on this machine
        raise InfosftError(f"training settings: {one_line(e)}") from None
    try:
        for callback in get_reporting_integration_callbacks(args.report_to):
            callback()
    except (ValueError, RuntimeError, ImportError) as e:
        raise InfosftError(f"config field 'report_to' {cfg.report_to}: {one_line(e)}") from None
    return args


# ---------------------------------------------------------------- train


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.data`` with the weighted loss.

    Args:
        resume: continue ``cfg.out`` from its last checkpoint (same data order, optimizer,
            scheduler and RNG state). The caller passes the run's stored config
            (:func:`infosft.train_config.resume_config`).
        overwrite: replace an existing ``cfg.out``; without it an existing run is an error.

    Returns:
        The run directory. ``status.json`` says ``finished`` (model in ``RUN/final``) or
        ``stopped`` (SIGTERM/SIGINT: checkpointed, resumable).

    Raises:
        InfosftError: bad data, model or config, or ``cfg.out`` in use by another process
            (its lock, :mod:`infosft.runlock`); raised before anything in ``cfg.out`` is
            touched. Any training error after that is recorded in ``status.json`` as
            ``failed`` and re-raised.
    """
    run_dir = Path(cfg.out)
    is_main = is_main_process()
    if cfg.mode == "static":  # a config error: say so before a run directory exists
        check_static_source(cfg)
    # Rank 0 holds the run's lock for the whole command (the other ranks work under its
    # hold): a second trainer or an evaluation of the same directory fails at once.
    with runlock.RunLock(run_dir, "training into it") if is_main else contextlib.nullcontext():
        console = attach_log(None) if is_main else []
        try:
            return _train_locked(cfg, run_dir, resume, overwrite, is_main)
        finally:
            detach_log(console)


def _train_locked(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool,
                  is_main: bool) -> Path:
    from infosft.models import load_tokenizer, pick_device

    ckpt = check_run_dir(run_dir, resume=resume, overwrite=overwrite) if is_main else (
        ts.last_checkpoint(run_dir) if resume else None)
    if overwrite:
        check_inputs_outside(cfg, run_dir)
        _check_reference_outside(cfg, run_dir)
    previous = ts.read_status(run_dir) if resume else {}
    # Everything that can fail on bad input comes first, writing nothing: the data, the
    # resume checks, the model. A bad data file or model leaves an old run as it was.
    WeightedLoss(cfg.scheme, cfg.mode, **cfg.knob_args())  # the knobs, as WeightedTrainer checks
    data = load_data(cfg, lambda: load_tokenizer(cfg.model,
                                                 trust_remote_code=cfg.trust_remote_code))
    data.source["config"] = result_values(cfg)
    if resume:
        check_resume_source(run_dir, data.source)
    device = pick_device(cfg.device)
    model, tokenizer = build_model(cfg, device)
    reference = build_reference(cfg, device, model)
    check_token_ids(data, model.get_input_embeddings().num_embeddings, cfg)
    args = checked_training_args(cfg, run_dir, device, bool(data.eval))
    if is_main:
        if overwrite:
            runlock.clear_dir(run_dir)  # the lock stays: nobody slips in meanwhile
        start_run_files(cfg, run_dir, ckpt, previous, data)
    attached = attach_log(run_dir) if is_main else []
    stop = StopRequest(run_dir, is_main)
    stop.install()
    try:
        out = _train(cfg, run_dir, ckpt, stop, is_main, previous, data, model, tokenizer,
                     device, args, reference)
        close_process_group()
        return out
    except BaseException as e:
        if is_main:
            log.error("training failed: %s", one_line(e),
                      exc_info=not isinstance(e, (InfosftError, KeyboardInterrupt)))
            ts.write_status(run_dir, state="failed", error=one_line(e) or "interrupted",
                            eta_s=None)
        raise
    finally:
        stop.uninstall()
        detach_log(attached)


def _train(cfg: TrainConfig, run_dir: Path, ckpt: Path | None, stop: StopRequest,
           is_main: bool, previous: dict[str, Any], data: TrainData, model, tokenizer,
           device: str, args, reference=None) -> Path:
    from transformers.trainer_callback import PrinterCallback

    knobs = cfg.resolved_knobs()
    meta = data.source.get("export_meta") or {}
    if meta and meta.get("template_used") is not False and meta.get("targets") != TARGET_RULE:
        log.warning("the export was made under an older target rule (its labels leave out the "
                    "newline after each turn's end token, which TRL and online training "
                    "supervise); re-export from a run scored now to match them")
    if cfg.mode == "static" and meta.get("scheme") not in (None, cfg.scheme):
        log.warning("static weights come from the export (scheme %s %s); the config's scheme "
                    "%s only labels the run", meta.get("scheme"), meta.get("knobs"), cfg.scheme)
    log.info("training %s on %s: %d train / %d eval examples (%s data), scheme %s %s, mode %s, "
             "%s, device %s", cfg.model or "the default model", cfg.data, len(data.train),
             len(data.eval), data.kind, cfg.scheme, knobs, cfg.mode,
             "LoRA" if cfg.lora else "full fine-tune", device)
    if reference is not None:
        log.info("reference model %s: one forward without gradient per micro-batch",
                 cfg.reference)
    if stop.requested:
        return _stopped(run_dir, is_main)
    padding_free = speed_up(model, args, device, reference)
    trainer = WeightedTrainer(
        model=model, args=args,
        train_dataset=ExampleDataset(data.train),
        eval_dataset=ExampleDataset(data.eval) if data.eval else None,
        data_collator=WeightedCollator(pad_id_of(tokenizer), padding_free=padding_free),
        processing_class=tokenizer, scheme=cfg.scheme, mode=cfg.mode, C=cfg.C, P=cfg.P,
        threshold=cfg.threshold, direction=cfg.direction, seed=cfg.seed, knobs=cfg.knobs,
        reference_model=reference,
        callbacks=[RunWriter(run_dir, stop, previous.get("elapsed_s") or 0.0)])
    trainer.remove_callback(PrinterCallback)  # RunWriter logs each step in one line
    # Frozen (LoRA base) fp32 CPU weights on oneDNN packed copies while training; the
    # dense ones are back before the model is saved.
    with packed_linears(model, batch_hint=1024, backward=True) as packed:
        if packed:
            log.info("%d frozen linear layers on oneDNN packed weights", packed)
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        # A stop that comes after the last step only delays the final save by seconds.
        if stop.requested and trainer.state.global_step < trainer.state.max_steps:
            return _stopped(run_dir, is_main)
        step = trainer.state.global_step
        if data.eval and not any(h.get("step") == step and "eval_loss" in h
                                 for h in trainer.state.log_history):
            trainer.evaluate()  # the final eval_loss, unless eval_steps just produced it
    final = run_dir / ts.FINAL
    trainer.save_model(str(final))  # the model or adapter, and the tokenizer
    if is_main:
        usual_permissions(final)  # safetensors writes owner-only files
        write_model_info(final, cfg, knobs)
        ts.write_status(run_dir, state="finished", eta_s=0.0)
        steps = trainer.state.global_step
        log.info("finished %d step%s; the model is in %s", steps, "" if steps == 1 else "s", final)
    return run_dir


def _check_reference_outside(cfg: TrainConfig, run_dir: Path) -> None:
    """As :func:`infosft.train_run.check_inputs_outside`, for the reference model."""
    value = cfg.reference
    if (value and not runlock.is_empty(run_dir) and Path(value).exists()
            and Path(value).resolve().is_relative_to(run_dir.resolve())):
        raise InfosftError(f"config field 'reference': {value} lies inside {run_dir}, which "
                           "--overwrite would delete; copy it elsewhere first")


def _stopped(run_dir: Path, is_main: bool) -> Path:
    if is_main:
        last = ts.last_checkpoint(run_dir)
        ts.write_status(run_dir, state="stopped", eta_s=None)
        log.info("stopped%s", f"; resume from {last} with --resume" if last else "")
    return run_dir
