"""Weighted fine-tuning with the Hugging Face Trainer: ``train(cfg) -> RUN/final``.

The trainer is :class:`infosft.trainers.WeightedTrainer`, the public class, with the loss
of :mod:`infosft.loss` (online weights from the trained model's own q, or static weights
from an exported dataset); everything else is the stock Trainer, so
``accelerate launch -m infosft train ...`` and ``torchrun`` work unchanged (DDP, FSDP,
DeepSpeed). Records become tokens through :func:`infosft.data.prepare`, the same code
that scoring uses, so a static export lines up with training tokens exactly.

The run directory layout and the status/metrics files are defined in
:mod:`infosft.train_status`. ``eval_loss`` is always the plain mean token NLL (the
``sft`` loss) of the held-out examples, whatever the training scheme, so that runs
with different schemes are comparable; it is averaged per eval batch (weighted by the
batch's examples), as the Trainer averages losses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from infosft import process, runlock
from infosft import train_status as ts
from infosft.atomic import atomic_write_text, usual_permissions
from infosft.data import IGNORE_INDEX, TARGET_RULE
from infosft.errors import InfosftError
from infosft.export_format import COLUMNS as EXPORT_COLUMNS
from infosft.export_format import has_columns, read_meta
from infosft.fast_dropout import speed_up_lora_dropout
from infosft.loss import STEP_PICTURE, WeightedLoss
from infosft.packed_linear import packed_linears
from infosft.train_config import TrainConfig, dump, first_change, result_values
from infosft.trainers import WeightedCollator, WeightedTrainer, pad_id_of
from infosft.varlen_attention import use_varlen_attention

log = logging.getLogger("infosft.train")
TRUNCATED = "no target token left after truncation"  # infosft.data.prepare's reason


# ---------------------------------------------------------------- data


@dataclass
class TrainData:
    """Examples as ``{"input_ids": (T,) long, "labels": (T,) long, "weights": (T,) float}``
    (``weights`` only for exported datasets)."""

    train: list[dict[str, torch.Tensor]]
    eval: list[dict[str, torch.Tensor]]
    kind: str                                  # raw | exported
    source: dict[str, Any]                     # provenance, saved as RUN/data/source.json
    eval_records: list[dict[str, Any]] = field(default_factory=list)


def is_exported(rows: list[tuple[int, dict[str, Any]]]) -> bool:
    """Whether records carry the token columns of an ``infosft export`` dataset."""
    return bool(rows) and has_columns(rows[0][1])


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, eval) row indices: a seeded shuffle, ``round(fraction * n)`` (at least 1 when
    fraction > 0) held out, each part kept in source order."""
    if fraction <= 0:
        return list(range(n)), []
    n_eval = max(1, round(fraction * n))
    if n_eval >= n:
        raise InfosftError(f"config field 'eval_split': {fraction} of {n} rows leaves no "
                           "training rows; lower it or set 0")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = sorted(order[:n_eval])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


def _as_tensor(value: Any, dtype: torch.dtype, raw, row: int, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise raw.error(f"expected a list of numbers, got {type(value).__name__}", row,
                        name) from None
    if t.dim() != 1 or not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32)):
        raise raw.error("expected a flat list of numbers", row, name)
    # a token id of 1.5 (or NaN) is no token: casting would silently make it 1 (or garbage)
    if dtype == torch.long and t.is_floating_point() and not bool((t == t.trunc()).all()):
        raise raw.error("expected whole numbers (token ids)", row, name)
    return t.to(dtype)


def exported_examples(raw, max_length: int, with_weights: bool) -> list[dict[str, torch.Tensor]]:
    """Token rows of an exported dataset, checked and cut to ``max_length``.

    Raises:
        InputError: naming the file, the row and the field (lengths differ, bad values,
            no target left).
    """
    out = []
    for row, rec in raw.rows:
        ex = {"input_ids": _as_tensor(rec.get("input_ids"), torch.long, raw, row, "input_ids"),
              "labels": _as_tensor(rec.get("labels"), torch.long, raw, row, "labels")}
        names = ("labels", "weights") if with_weights else ("labels",)
        if with_weights:
            ex["weights"] = _as_tensor(rec.get("weights"), torch.float32, raw, row, "weights")
            if not (torch.isfinite(ex["weights"]).all() and (ex["weights"] >= 0).all()):
                raise raw.error("weights must be finite and >= 0", row, "weights")
        for name in names:
            if len(ex[name]) != len(ex["input_ids"]):
                raise raw.error(f"{len(ex[name])} values for {len(ex['input_ids'])} input_ids",
                                row, name)
        ex = {k: v[:max_length] for k, v in ex.items()}
        # Position 0 is predicted by nothing, so it is never a target; as for raw records,
        # an example with nothing left to learn from is dropped.
        if (ex["labels"][1:] != IGNORE_INDEX).any():
            out.append(ex)
    if len(out) < len(raw.rows):
        log.warning("%s: %d rows have no target token within max_length %d and are left out",
                    raw.source, len(raw.rows) - len(out), max_length)
    if not out:
        raise raw.error(f"no row has a target token within max_length {max_length}")
    return out


def raw_examples(raw, tokenizer, cfg: TrainConfig) -> tuple[list[dict[str, torch.Tensor]],
                                                              list[dict[str, Any]]]:
    """Tokenized examples of raw records (as scoring tokenizes them) and their records."""
    from infosft.data import prepare

    skipped: list[dict[str, Any]] = []
    _, prepared = prepare(raw.rows, tokenizer, max_length=cfg.max_length,
                          use_template=cfg.use_template, fields=cfg.fields, source=raw.source,
                          unit=raw.unit, skip_invalid=True, skipped=skipped)
    # A bad row is an error, as in scoring; one whose response lies past max_length is
    # only dropped (it has nothing to learn from), as long prompts are common.
    bad = [s for s in skipped if not s["reason"].startswith(TRUNCATED)]
    if bad:
        raise raw.error(bad[0]["reason"], bad[0]["row"], bad[0]["field"])
    if skipped:
        log.warning("%s: %d rows have no target token within max_length %d and are left out "
                    "(first: %s %d)", raw.source, len(skipped), cfg.max_length, raw.unit,
                    skipped[0]["row"])
    examples = [{"input_ids": torch.tensor(p.tokens.input_ids, dtype=torch.long),
                 "labels": torch.tensor(p.tokens.labels(), dtype=torch.long)} for p in prepared]
    return examples, [p.record for p in prepared]


def read_source(source: str, cfg: TrainConfig, limit: int | None = None):
    from infosft.records import read_records

    return read_records(source, limit=limit, split=cfg.split)


def load_data(cfg: TrainConfig, tokenizer_fn) -> TrainData:
    """The train and eval examples of ``cfg``; ``tokenizer_fn()`` is called only for raw data.

    Static mode with a raw dataset is an error, raised before the tokenizer is loaded.
    """
    raw = read_source(cfg.data, cfg, cfg.limit)
    exported = is_exported(raw.rows)
    if cfg.mode == "static" and not exported:
        check_static_source(cfg)
    static = cfg.mode == "static"
    tokenizers = []  # loaded once, on first need

    def examples_of(r) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, Any]] | None]:
        """(examples, their raw records, or None for an exported dataset)."""
        if is_exported(r.rows):
            return exported_examples(r, cfg.max_length, static), None
        if static:
            raise InfosftError(f"{r.source}: static mode needs eval data exported by "
                               "`infosft export` too")
        tokenizers[:] = tokenizers or [tokenizer_fn()]
        return raw_examples(r, tokenizers[0], cfg)

    examples, records = examples_of(raw)
    source = {"data": cfg.data, "kind": "exported" if exported else "raw",
              "content_hash": raw.content_hash, "rows": len(raw.rows),
              "export_meta": read_meta(cfg.data) if exported else None}
    if cfg.eval_data:
        eval_raw = read_source(cfg.eval_data, cfg)
        eval_examples, eval_records = examples_of(eval_raw)
        source["eval_data"] = {"data": cfg.eval_data, "content_hash": eval_raw.content_hash}
        train_ex = examples
    else:
        tr, ev = split_indices(len(examples), cfg.eval_split, cfg.seed)
        train_ex = [examples[i] for i in tr]
        eval_examples = [examples[i] for i in ev]
        eval_records = None if records is None else [records[i] for i in ev]
    source.update(train_examples=len(train_ex), eval_examples=len(eval_examples))
    return TrainData(train_ex, eval_examples, source["kind"], source, eval_records or [])


def check_static_source(cfg: TrainConfig) -> None:
    """Static weights need an exported dataset: checked on its first row."""
    from infosft.records import read_records

    if not is_exported(read_records(cfg.data, limit=1, split=cfg.split).rows):
        raise InfosftError(f"config field 'mode': static weights need a dataset written by "
                           f"`infosft export` (columns {', '.join(EXPORT_COLUMNS)}); "
                           f"{cfg.data} has none, use mode online")


def check_token_ids(data: TrainData, vocab_size: int, cfg: TrainConfig) -> None:
    """Token ids within the model's embeddings (an export made under another model, or a
    tokenizer larger than its model, would fail mid-training with an index error)."""
    for examples, source in ((data.train, cfg.data), (data.eval, cfg.eval_data or cfg.data)):
        for ex in examples:
            ids, labels = ex["input_ids"], ex["labels"]
            bad = ids[(ids < 0) | (ids >= vocab_size)]
            bad_labels = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size))]
            if len(bad) or len(bad_labels):
                value = int((bad if len(bad) else bad_labels)[0])
                raise InfosftError(f"{source}: token id {value} is outside the model's "
                                   f"vocabulary (0..{vocab_size - 1}); was it exported "
                                   "under another model?")


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[dict[str, torch.Tensor]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.examples[i]


# ---------------------------------------------------------------- stop / status


class StopRequest:
    """Set by SIGTERM / SIGINT: the trainer checkpoints and stops at the next step end.
    A second SIGINT interrupts at once (KeyboardInterrupt)."""

    def __init__(self, run_dir: Path, is_main: bool):
        self.run_dir, self.is_main = run_dir, is_main
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.is_main:
            ts.write_status(self.run_dir, state="stopping")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals only reach the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _any_rank(flag: bool, device) -> bool:
    """``flag`` OR-ed across processes, so all ranks stop at the same step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _close_process_group() -> None:
    """Under a launcher, wait for every rank, then close the process group: rank 0 hosts
    the rendezvous store, and a rank still using it when rank 0 exits aborts (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class RunWriter(TrainerCallback):
    """Writes ``status.json`` every step and a ``metrics.jsonl`` line per log (the weight
    stats from the log itself: :class:`infosft.trainers.WeightedTrainer` adds them)."""

    def __init__(self, run_dir: Path, stop: StopRequest, prior_elapsed: float):
        self.run_dir, self.stop = run_dir, stop
        self.prior_elapsed = prior_elapsed

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = self.t_mark = time.time()
        self.step0 = state.global_step
        self.tokens_mark = state.num_input_tokens_seen
        if state.is_world_process_zero:
            ts.write_status(self.run_dir, state=self._state(), step=state.global_step,
                            total_steps=state.max_steps, epoch=state.epoch)

    def _state(self) -> str:
        return "stopping" if self.stop.requested else "running"

    def on_step_end(self, args, state, control, **kw):
        if _any_rank(self.stop.requested, args.device):
            self.stop.requested = True
            control.should_save = True
            control.should_training_stop = True
        if state.is_world_process_zero:
            now = time.time()
            done = state.global_step - self.step0
            rate = done / max(now - self.t0, 1e-9)
            eta = (state.max_steps - state.global_step) / rate if done else None
            ts.write_status(self.run_dir, state=self._state(), step=state.global_step,
                            total_steps=state.max_steps, epoch=state.epoch,
                            elapsed_s=self.prior_elapsed + now - self.t0, eta_s=eta)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        now = time.time()
        if "loss" in logs:
            tokens = state.num_input_tokens_seen - self.tokens_mark
            tps = tokens / max(now - self.t_mark, 1e-9)
            self.t_mark, self.tokens_mark = now, state.num_input_tokens_seen
            line = {"step": state.global_step, "epoch": logs.get("epoch", state.epoch),
                    "loss": logs["loss"], "learning_rate": logs.get("learning_rate"),
                    "grad_norm": logs.get("grad_norm"), "tokens_per_s": tps,
                    "mean_weight": logs.get("mean_weight"),
                    "zero_weight_share": logs.get("zero_weight_share"),
                    **{k: logs.get(k) for k in STEP_PICTURE}, "time": now}
        elif "eval_loss" in logs:
            line = {"step": state.global_step, "epoch": state.epoch,
                    "eval_loss": logs["eval_loss"], "time": now}
        else:
            return
        if state.is_world_process_zero:
            ts.append_metrics(self.run_dir, line)
            log.info(" ".join(f"{k} {_fmt(v)}" for k, v in line.items()
                              if k not in ("time", "q_hist")))

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            ckpt = ts.last_checkpoint(self.run_dir)
            if ckpt:
                usual_permissions(ckpt)  # safetensors writes owner-only files


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- run directory


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Check the run directory (its lock held); the checkpoint to resume from.

    Deletes nothing: an ``overwrite`` clears the old run only once the new one's data and
    model have loaded (:func:`train`), and only if it is a training run, so a typo in
    ``--out`` cannot empty a directory of other files.
    """
    if resume:
        if not (run_dir / ts.CONFIG).is_file():
            raise InfosftError(f"{run_dir}: no training run to resume (no {ts.CONFIG})")
        status = ts.read_status(run_dir)
        if status["state"] in ts.ACTIVE_STATES:
            raise InfosftError(f"{run_dir}: the run is still {status['state']} "
                               f"(pid {status['pid']} on {status['host']})")
        if status["state"] == "finished":
            raise InfosftError(f"{run_dir}: the run has already finished")
        ckpt = ts.last_checkpoint(run_dir)
        if ckpt is None:
            raise InfosftError(f"{run_dir}: no complete checkpoint to resume from; start "
                               "over with --overwrite")
        return ckpt
    if runlock.is_empty(run_dir):
        return None
    if not overwrite:
        raise InfosftError(f"{run_dir} already exists; use --resume to continue it or "
                           "--overwrite to replace it")
    if not ts.is_run(run_dir):
        raise InfosftError(f"{run_dir} exists and is not a training run; refusing to "
                           "overwrite it (choose another --out)")
    status = ts.read_status(run_dir)
    if status["state"] in ts.ACTIVE_STATES:
        raise InfosftError(f"{run_dir}: cannot overwrite a run that is still "
                           f"{status['state']} (pid {status['pid']})")
    return None


def check_inputs_outside(cfg: TrainConfig, run_dir: Path) -> None:
    """The data and the model must not lie inside the run that ``--overwrite`` replaces:
    they would be deleted under the new run (``--model RUN/final`` would even become its
    own base model)."""
    if runlock.is_empty(run_dir):
        return  # nothing there to delete
    root = run_dir.resolve()
    for name in ("data", "eval_data", "model"):
        value = getattr(cfg, name)
        if value and Path(value).exists() and Path(value).resolve().is_relative_to(root):
            raise InfosftError(f"config field {name!r}: {value} lies inside {run_dir}, which "
                               "--overwrite would delete; copy it elsewhere first")


class _OneLine(logging.Formatter):
    """The message alone: tracebacks go to train.log, not the console."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def _attach_log(run_dir: Path | None) -> list[tuple[logging.Logger, logging.Handler]]:
    """infosft's messages on stdout (``run_dir`` None), or in train.log with
    transformers' messages (once the run directory is the new run's)."""
    ours = logging.getLogger("infosft")
    ours.setLevel(logging.INFO)
    if run_dir is None:
        stdout = logging.StreamHandler(sys.stdout)
        stdout.setFormatter(_OneLine("%(message)s"))
        attached = [(ours, stdout)]
    else:
        file_handler = logging.FileHandler(run_dir / ts.LOG, encoding="utf-8")
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        attached = [(ours, file_handler), (logging.getLogger("transformers"), file_handler)]
    for logger, handler in attached:
        logger.addHandler(handler)
    return attached


def _detach_log(attached) -> None:
    for logger, handler in attached:
        logger.removeHandler(handler)
    for handler in {h for _, h in attached}:
        handler.close()


def one_line(e: BaseException) -> str:
    if isinstance(e, InfosftError):
        return str(e)
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def write_model_info(final: Path, cfg: TrainConfig, knobs: dict[str, Any]) -> None:
    """``final/infosft_model.json``: what :func:`infosft.models.load_model` needs to rebuild
    the model, plus how it was trained."""
    base = cfg.model
    if base is not None and Path(base).exists():
        base = str(Path(base).resolve())  # a relative path would break when loaded elsewhere
    atomic_write_text(final / ts.MODEL_INFO, json.dumps({
        "base_model": base, "adapter": cfg.lora, "scheme": cfg.scheme, "knobs": knobs,
        "mode": cfg.mode, "data": cfg.data}, indent=1) + "\n")


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


def speed_up(model, args, device: str) -> bool:
    """What makes a step cheaper without changing its loss; returns whether batches go
    padding-free.

    * Padding-free batches (no compute on padding) with each document's attention alone
      (:mod:`infosft.varlen_attention`), for models on transformers' ``sdpa``.
    * On the CPU, LoRA's dropout masks drawn four elements per random number
      (:mod:`infosft.fast_dropout`).

    (The trainer's target head and the packed frozen weights are the others; see
    :mod:`infosft.target_head`, :mod:`infosft.packed_linear`.)
    """
    padding_free = use_varlen_attention(model)
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
    is_main = _is_main_process()
    if cfg.mode == "static":  # a config error: say so before a run directory exists
        check_static_source(cfg)
    # Rank 0 holds the run's lock for the whole command (the other ranks work under its
    # hold): a second trainer or an evaluation of the same directory fails at once.
    with runlock.RunLock(run_dir, "training into it") if is_main else contextlib.nullcontext():
        console = _attach_log(None) if is_main else []
        try:
            return _train_locked(cfg, run_dir, resume, overwrite, is_main)
        finally:
            _detach_log(console)


def _train_locked(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool,
                  is_main: bool) -> Path:
    from infosft.models import load_tokenizer, pick_device

    ckpt = check_run_dir(run_dir, resume=resume, overwrite=overwrite) if is_main else (
        ts.last_checkpoint(run_dir) if resume else None)
    if overwrite:
        check_inputs_outside(cfg, run_dir)
    previous = ts.read_status(run_dir) if resume else {}
    # Everything that can fail on bad input comes first, writing nothing: the data, the
    # resume checks, the model. A bad data file or model leaves an old run as it was.
    WeightedLoss(cfg.scheme, cfg.mode, **cfg.knob_args())  # the knobs, as WeightedTrainer checks
    data = load_data(cfg, lambda: load_tokenizer(cfg.model,
                                                 trust_remote_code=cfg.trust_remote_code))
    data.source["config"] = result_values(cfg)
    if resume:
        _check_resume_source(run_dir, data.source)
    device = pick_device(cfg.device)
    model, tokenizer = build_model(cfg, device)
    check_token_ids(data, model.get_input_embeddings().num_embeddings, cfg)
    args = checked_training_args(cfg, run_dir, device, bool(data.eval))
    if is_main:
        if overwrite:
            runlock.clear_dir(run_dir)  # the lock stays: nobody slips in meanwhile
        _start_run_files(cfg, run_dir, ckpt, previous, data)
    attached = _attach_log(run_dir) if is_main else []
    stop = StopRequest(run_dir, is_main)
    stop.install()
    try:
        out = _train(cfg, run_dir, ckpt, stop, is_main, previous, data, model, tokenizer,
                     device, args)
        _close_process_group()
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
        _detach_log(attached)


def _start_run_files(cfg: TrainConfig, run_dir: Path, ckpt: Path | None,
                     previous: dict[str, Any], data: TrainData) -> None:
    """config.yaml, a ``queued`` status naming this process, data/source.json and the
    held-out records: the run directory is now the new run's."""
    dump(cfg, run_dir / ts.CONFIG)
    if ckpt is not None:
        ts.truncate_metrics(run_dir, ts.checkpoint_step(ckpt))
    ts.write_status(run_dir, state="queued", **process.current(),
                    started_at=previous.get("started_at") or time.time(), error=None,
                    step=previous.get("step") or 0, total_steps=previous.get("total_steps"),
                    epoch=previous.get("epoch"), elapsed_s=previous.get("elapsed_s"),
                    eta_s=None)
    atomic_write_text(run_dir / ts.SOURCE, json.dumps(data.source, indent=1, default=str) + "\n")
    if data.eval_records:
        atomic_write_text(run_dir / ts.EVAL_DATA, "".join(
            json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in data.eval_records))


def _train(cfg: TrainConfig, run_dir: Path, ckpt: Path | None, stop: StopRequest,
           is_main: bool, previous: dict[str, Any], data: TrainData, model, tokenizer,
           device: str, args) -> Path:
    from transformers.trainer_callback import PrinterCallback

    knobs = cfg.knobs()
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
    if stop.requested:
        return _stopped(run_dir, is_main)
    padding_free = speed_up(model, args, device)
    trainer = WeightedTrainer(
        model=model, args=args,
        train_dataset=ExampleDataset(data.train),
        eval_dataset=ExampleDataset(data.eval) if data.eval else None,
        data_collator=WeightedCollator(pad_id_of(tokenizer), padding_free=padding_free),
        processing_class=tokenizer, scheme=cfg.scheme, mode=cfg.mode, **cfg.knob_args(),
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


def _stopped(run_dir: Path, is_main: bool) -> Path:
    if is_main:
        last = ts.last_checkpoint(run_dir)
        ts.write_status(run_dir, state="stopped", eta_s=None)
        log.info("stopped%s", f"; resume from {last} with --resume" if last else "")
    return run_dir


def _check_resume_source(run_dir: Path, source: dict[str, Any]) -> None:
    """A resumed run must see the data and settings it started with (same order, same
    examples, same result-affecting config): data compared by content, not by the path's
    spelling; a hand-edited ``config.yaml`` is caught against what the run recorded."""
    path = run_dir / ts.SOURCE
    if not path.is_file():
        return  # a run from before provenance was recorded: nothing to compare
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    if not isinstance(before, dict):
        raise InfosftError(f"{path}: damaged, cannot tell whether the data changed; delete "
                           "it to resume without that check")

    def facts(src: dict[str, Any]) -> dict[str, Any]:
        eval_data = src.get("eval_data")
        return {"content_hash": src.get("content_hash"),
                "train_examples": src.get("train_examples"),
                "eval_examples": src.get("eval_examples"),
                "eval_data content_hash": eval_data.get("content_hash")
                if isinstance(eval_data, dict) else None}

    was, now = facts(before), facts(source)
    for key, value in now.items():
        if was[key] != value:
            raise InfosftError(f"--resume: the data changed since the run started ({key} "
                               f"{was[key]} -> {value}); start a new run")
    config = before.get("config")
    name = first_change(config if isinstance(config, dict) else {}, source["config"])
    if name is not None:
        raise InfosftError(f"--resume: {run_dir / ts.CONFIG} was edited since the run "
                           f"started: {name!r} was {before['config'][name]!r}, now "
                           f"{source['config'][name]!r}; restore it or start a new run")
