"""The configuration of a weighted fine-tune: one dataclass, read from YAML/JSON and flags.

Precedence: a flag given on the command line beats the config file, which beats the
defaults below. Everything is validated here, before any data or model is loaded, with
a one-line message naming the field and what it accepts.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from infosft.configs import check_keys, option as _f, read_config_file, write_config
from infosft.errors import InfosftError
from infosft.schemes import get as get_scheme
from infosft.weights import check_own_knobs, needed_fields, resolve_knobs

MODES = ("online", "static")
DTYPES = ("float32", "bfloat16", "float16")
LORA_LR, FULL_LR = 2e-4, 2e-5
# Fields that a resumed run may change: they do not affect what is learned.
RESUME_FREE = frozenset({"out", "logging_steps", "save_steps", "eval_steps", "report_to",
                         "device", "trust_remote_code"})


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded as ``RUN/config.yaml``)."""

    data: str | None = _f(None, "required: a dataset file/dir/hub name (as `infosft score` "
                          "reads it) or a weighted dataset written by `infosft export`")
    out: str | None = _f(None, "required: the run directory to create")
    model: str | None = _f(None, "base model: a local path or hub id (default: the embedded "
                           "SmolLM2-135M-Instruct)")
    scheme: str = _f("infosft", "token weighting: sft, dft, infosft, profit, eaft, excess, "
                     "or your own as module:function")
    C: float | None = _f(None, "InfoSFT: C > 0 (or give P)")
    P: float | None = _f(None, "InfoSFT: P in (0.5, 1), C = log(P/(1-P)); default 0.93")
    threshold: float | list[float] | None = _f(
        None, "ProFit: tau in [0, 1] (default 0.1), or [low, high] for direction middle",
        cli=dict(type=float, nargs="+", metavar="TAU"))
    direction: str | None = _f(None, "ProFit: higher (default), lower, middle or random")
    knobs: dict[str, Any] | None = _f(
        None, "knobs of the scheme beyond C, P, threshold, direction, seed, e.g. {alpha: 0.5} "
        "for eaft, {keep: 0.6, per: example} for excess, or a user scheme's",
        # no flag of its own: the CLI's --alpha, --keep, --per, --knob NAME=VALUE fill it
        no_flag=True)
    reference: str | None = _f(
        None, "a reference model (local path or hub id; the default's path works) whose "
        "target log-probs the excess scheme compares against; loaded once, run without "
        "gradient in the same step")
    mode: str = _f("online", "online: weights from the trained model's own q at every step "
                   "(the papers' method); static: the per-token weights of an exported dataset")
    lora: bool = _f(True, "train a LoRA adapter (default: fast on CPU, small to save); "
                    "false = full fine-tune")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: float = _f(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = _f(0.05, "LoRA dropout in [0, 1)")
    lr: float | None = _f(None, f"peak learning rate (default {LORA_LR:g} with LoRA, "
                          f"{FULL_LR:g} for a full fine-tune)")
    epochs: float = _f(1, "passes over the training data")
    max_steps: int | None = _f(None, "optimizer steps to train; overrides epochs")
    batch_size: int = _f(4, "examples per device per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_length: int = _f(1024, "tokens per example; longer ones are cut from the right")
    logging_steps: int = _f(5, "log loss and weight statistics every N steps")
    save_steps: int | None = _f(None, "checkpoint every N steps (default: only when stopped; "
                                "the final model is always saved)")
    eval_steps: int | None = _f(None, "evaluate every N steps (default: only at the end)")
    seed: int = _f(0, "seed of the data order, LoRA init, eval split and ProFit random")
    eval_split: float = _f(0.05, "fraction of rows held out for eval_loss; 0 = no eval")
    eval_data: str | None = _f(None, "a separate eval dataset (then nothing is held out)")
    limit: int | None = _f(None, "use only the first N rows of data")
    split: str = _f("train", "split of a dataset directory or hub name")
    fields: dict[str, str] | None = _f(
        None, "column mapping, e.g. {prompt: q, response: a}; as a flag NAME=COLUMN with "
        "NAME one of prompt, response, input, messages, text (repeatable)", flag="--field",
        cli=dict(action="append", metavar="NAME=COLUMN"))
    use_template: bool = _f(True, "apply the tokenizer's chat template (false: prompt + "
                            "response)", flag="--template",
                            cli=dict(action=argparse.BooleanOptionalAction))
    trust_remote_code: bool = _f(False, "allow model repos to run their own code",
                                 cli=dict(action="store_const", const=True))
    report_to: list[str] = _f(["none"], "experiment trackers (wandb, tensorboard, ...) "
                              "passed to transformers", cli=dict(nargs="+", metavar="TRACKER"))
    device: str | None = _f(None, "cpu, cuda, mps (default: the best available)")
    dtype: str | None = _f(None, "model weights: float32, bfloat16 (default: bf16 on CUDA, "
                           "fp32 elsewhere; for a full fine-tune on GPU prefer float32)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (less memory)")
    warmup_ratio: float = _f(0.0, "fraction of steps of linear warmup")
    weight_decay: float = _f(0.0, "AdamW weight decay")

    def knob_args(self) -> dict[str, Any]:
        """The knobs as given (None = default), for ``make_loss_func`` / ``resolve_knobs``:
        the flat fields and those of ``knobs``."""
        return {**(self.knobs or {}), "C": self.C, "P": self.P, "threshold": self.threshold,
                "direction": self.direction, "seed": self.seed}

    def resolved_knobs(self) -> dict[str, Any]:
        """The scheme's canonical knobs (see :func:`infosft.weights.resolve_knobs`)."""
        return resolve_knobs(self.scheme, **self.knob_args())


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


def field_default(name: str) -> Any:
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


def load_config(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON config file; unknown keys are an error naming them."""
    values = read_config_file(path)
    _check_keys(values, str(path))
    return values


def _check_keys(values: dict[str, Any], where: str) -> None:
    check_keys(values, FIELD_NAMES, where)


class ConfigError(InfosftError):
    """A bad config value; ``field`` names it (None: several fields together)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


KNOB_FIELDS = ("scheme", "C", "P", "threshold", "direction", "seed", "knobs")
#: The knobs that are config fields of their own (``knobs`` holds every other one).
FLAT_KNOBS = ("C", "P", "threshold", "direction", "seed")


def knob_values(knobs: dict[str, Any] | None) -> dict[str, Any]:
    """A scheme's knobs as TrainConfig values: the flat fields, every other knob under
    ``knobs`` (None when there is none).

    >>> knob_values({"C": 2.0, "alpha": 0.5})
    {'C': 2.0, 'knobs': {'alpha': 0.5}}
    >>> knob_values({"threshold": 0.2})
    {'threshold': 0.2, 'knobs': None}
    """
    knobs = knobs or {}
    extra = {k: v for k, v in knobs.items() if k not in FLAT_KNOBS}
    return {**{k: v for k, v in knobs.items() if k in FLAT_KNOBS}, "knobs": extra or None}


def resolve(file_values: dict[str, Any] | None = None,
            overrides: dict[str, Any] | None = None, *,
            source: str | Path | None = None) -> TrainConfig:
    """A validated TrainConfig: defaults < ``file_values`` < ``overrides``.

    ``None`` in ``overrides`` means "not given" (argparse's default), so only the flags
    a user typed override the file. The learning rate, when not given, follows ``lora``.
    ``source``: the file ``file_values`` came from; an error in one of its values names
    it (``run.yaml: config field 'lr': ...``), so the user knows where to look.
    """
    file_values = dict(file_values or {})
    _check_keys(file_values, str(source or "config"))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_keys(given, "flags")
    values = file_values | given
    if isinstance(values.get("report_to"), str):
        values["report_to"] = [values["report_to"]]
    if isinstance(values.get("threshold"), (list, tuple)) and len(values["threshold"]) == 1:
        values["threshold"] = values["threshold"][0]
    cfg = TrainConfig(**values)
    if cfg.lr is None and isinstance(cfg.lora, bool):
        cfg.lr = LORA_LR if cfg.lora else FULL_LR
    try:
        validate(cfg)
    except ConfigError as e:
        from_file = set(file_values) - set(given)
        if source and (e.field in from_file if e.field else bool(from_file & set(KNOB_FIELDS))):
            raise ConfigError(f"{source}: {e}", e.field) from None
        raise
    return cfg


def _short(value: Any) -> str:
    """``repr`` cut to a readable length: a value in an error line may be huge."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = 80
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 6
    r.maxlevel = 3
    return r.repr(value)


def _bad(name: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"config field {name!r}: expected {expected}, got {_short(value)}", name)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def validate(cfg: TrainConfig) -> None:
    """Check every field; raise :class:`InfosftError` naming the first bad one."""
    for name in ("data", "out"):
        v = getattr(cfg, name)
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"config field {name!r} is required (a "
                              f"{'dataset' if name == 'data' else 'run directory'} path)", name)
    for name in ("model", "eval_data", "device", "direction", "reference"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise _bad(name, "a non-empty string", v)
    check_device(cfg.device)
    for name in ("data", "eval_data"):
        v = getattr(cfg, name)
        # A name with a file suffix must be a local file; others may be hub names.
        if v is not None and Path(v).suffix and not Path(v).exists():
            raise ConfigError(f"config field {name!r}: no such file {v}", name)
    try:
        get_scheme(cfg.scheme)  # a built-in, or a module:function that loads and passes
    except ValueError as e:
        raise ConfigError(f"config field 'scheme': {e}", "scheme") from None
    if cfg.mode not in MODES:
        raise _bad("mode", f"one of {', '.join(MODES)}", cfg.mode)
    _check_knobs(cfg.knobs)
    try:
        check_own_knobs(cfg.scheme, cfg.knobs or {})
    except ValueError as e:
        raise ConfigError(f"config field 'knobs': {e}", "knobs") from None
    if cfg.mode == "online" and "logp_ref" in needed_fields(cfg.scheme) and not cfg.reference:
        raise ConfigError(f"config field 'reference' is required by scheme {cfg.scheme!r} "
                          "online (a model to compare each token's log-prob with, e.g. "
                          "the base model)", "reference")
    for name in ("lora", "use_template", "trust_remote_code", "gradient_checkpointing"):
        if not isinstance(getattr(cfg, name), bool):
            raise _bad(name, "true or false", getattr(cfg, name))
    for name in ("C", "P", "lr", "lora_alpha"):
        v = getattr(cfg, name)
        if v is not None and not _is_num(v):
            raise _bad(name, "a number", v)
    if not _is_int(cfg.seed):
        raise _bad("seed", "an integer", cfg.seed)
    try:
        resolve_knobs(cfg.scheme, **{k: v for k, v in cfg.knob_args().items()
                                     if k not in FLAT_KNOBS})
    except ValueError as e:
        raise ConfigError(f"config field 'knobs': {e}", "knobs") from None
    try:
        cfg.resolved_knobs()
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    _positive_ints(cfg, ("lora_r", "batch_size", "grad_accum", "logging_steps"),
                   ("max_steps", "save_steps", "eval_steps", "limit"))
    if not _is_int(cfg.max_length) or cfg.max_length < 2:
        raise _bad("max_length", "an integer >= 2", cfg.max_length)
    if cfg.lr is None or cfg.lr <= 0:
        raise _bad("lr", "a number > 0", cfg.lr)
    if cfg.lora_alpha <= 0:
        raise _bad("lora_alpha", "a number > 0", cfg.lora_alpha)
    _in_range(cfg, "epochs", 0, math.inf, low_open=True)
    _in_range(cfg, "lora_dropout", 0, 1, high_open=True)
    _in_range(cfg, "eval_split", 0, 1, high_open=True)
    _in_range(cfg, "warmup_ratio", 0, 1, high_open=True)
    _in_range(cfg, "weight_decay", 0, math.inf)
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise _bad("dtype", f"one of {', '.join(DTYPES)}", cfg.dtype)
    if cfg.dtype == "float16" and not cfg.lora:
        raise ConfigError("config field 'dtype': float16 weights only train with LoRA (the "
                          "gradient scaler needs fp32 trainable weights); use float32 or "
                          "bfloat16", "dtype")
    if not isinstance(cfg.split, str) or not cfg.split:
        raise _bad("split", "a split name", cfg.split)
    if cfg.fields is not None and not (isinstance(cfg.fields, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in cfg.fields.items())):
        raise _bad("fields", "a mapping of names to column names", cfg.fields)
    if not (isinstance(cfg.report_to, list) and all(isinstance(r, str) for r in cfg.report_to)):
        raise _bad("report_to", "a list of tracker names (or none)", cfg.report_to)


def _check_knobs(knobs: Any) -> None:
    if knobs is None:
        return
    if not (isinstance(knobs, dict) and all(isinstance(k, str) for k in knobs)):
        raise _bad("knobs", "a mapping of knob names to values", knobs)
    flat = [k for k in knobs if k in FLAT_KNOBS]
    if flat:
        raise ConfigError(f"config field 'knobs': {flat[0]} is a config field of its own; "
                          f"give it as {flat[0]}, not inside knobs", "knobs")
    for name, value in knobs.items():
        if not (isinstance(value, (str, int, float)) or (
                isinstance(value, list) and all(isinstance(v, (int, float)) for v in value))):
            raise _bad("knobs", f"a number or text for knob {name!r}", value)


def _positive_ints(cfg: TrainConfig, required: tuple[str, ...], optional: tuple[str, ...]):
    for name in required + optional:
        v = getattr(cfg, name)
        if v is None and name in optional:
            continue
        if not _is_int(v) or v < 1:
            raise _bad(name, "an integer >= 1" + (" or null" if name in optional else ""), v)


def _in_range(cfg: TrainConfig, name: str, low: float, high: float, *,
              low_open: bool = False, high_open: bool = False) -> None:
    v = getattr(cfg, name)
    ok = _is_num(v) and (v > low if low_open else v >= low) and (
        v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise _bad(name, f"a number in {interval}", v)


TRAIN_DEVICES = ("cpu", "cuda", "mps")


def check_device(device: str | None) -> None:
    """Raise :class:`ConfigError` unless ``device`` (None: the best available) is one this
    machine has (:func:`infosft.models.check_device`), before any data or model loads.

    Training takes a device type only: the Trainer puts each process on its own GPU, so
    the index of ``cuda:1`` would be ignored (``CUDA_VISIBLE_DEVICES`` chooses GPUs).
    """
    from infosft.models import check_device as on_this_machine

    if device is None:
        return
    try:
        dev = on_this_machine(device)
    except InfosftError as e:
        raise ConfigError(f"config field 'device': {e}", "device") from None
    if dev not in TRAIN_DEVICES:
        raise ConfigError(f"config field 'device': training takes {', '.join(TRAIN_DEVICES)}, "
                          f"not {device!r} (choose GPUs with CUDA_VISIBLE_DEVICES)", "device")


def as_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


def dump(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically; returns ``path``."""
    return write_config(as_dict(cfg), path)


# Fields that name a local file or directory (or a hub id / dataset name): equal when
# they resolve to the same path, so `./data.jsonl` and `data.jsonl` are one dataset.
PATH_FIELDS = ("data", "eval_data", "model", "reference")


def same_value(name: str, a: Any, b: Any) -> bool:
    """Whether two values of field ``name`` mean the same run."""
    if a == b:
        return True
    if name in PATH_FIELDS and isinstance(a, str) and isinstance(b, str):
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    return False


def result_values(cfg: TrainConfig) -> dict[str, Any]:
    """The fields that decide what a run learns (all but RESUME_FREE), as JSON values:
    recorded when a run starts, so a resume can tell that ``config.yaml`` was edited."""
    return json.loads(json.dumps({k: v for k, v in as_dict(cfg).items()
                                  if k not in RESUME_FREE}))


def first_change(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """The first field of ``after`` whose value differs from ``before``'s, else None."""
    return next((k for k in after if k in before and not same_value(k, before[k], after[k])),
                None)


def resume_config(stored: dict[str, Any], file_values: dict[str, Any] | None = None,
                  overrides: dict[str, Any] | None = None, *,
                  source: str | Path | None = None) -> TrainConfig:
    """The config of a resumed run: the stored one (read from ``source``, the run's
    ``config.yaml``), with only resume-free fields changed.

    Raises:
        InfosftError: naming the first field whose new value would change what is learned.
    """
    # The stored device may be one this machine lacks (the run moved here); it is
    # resume-free, and the device the resumed run will use is checked below.
    base = resolve({**stored, "device": None}, source=source)
    new = {k: v for k, v in (dict(file_values or {}) | {
        k: v for k, v in (overrides or {}).items() if v is not None}).items()}
    _check_keys(new, "flags")
    changed = resolve(stored, new, source=source)
    name = first_change(vars(base), {k: getattr(changed, k) for k in new
                                     if k not in RESUME_FREE})
    if name is not None:
        raise InfosftError(f"--resume: {name!r} of the run is {_short(getattr(base, name))}; "
                           f"it cannot change to {_short(getattr(changed, name))} (start a "
                           "new run, or drop the flag)")
    return changed
