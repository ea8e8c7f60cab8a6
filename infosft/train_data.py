"""Training data: records or an exported dataset -> examples of ``input_ids``, ``labels``
and ``weights`` tensors, the eval split, and the checks that run before a model loads.

Records become tokens through :func:`infosft.data.prepare`, the same code that scoring
uses, so a static export lines up with training tokens exactly.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from infosft.data import IGNORE_INDEX
from infosft.errors import InfosftError
from infosft.export_format import COLUMNS as EXPORT_COLUMNS
from infosft.export_format import has_columns, read_meta
from infosft.train_config import TrainConfig

log = logging.getLogger("infosft.train")
TRUNCATED = "no target token left after truncation"  # infosft.data.prepare's reason


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
