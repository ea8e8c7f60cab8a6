"""Records -> token ids + target mask: the one definition shared by scoring and training.

A record is normalized to a conversation (a list of ``{role, content}``) or a
plain text, then tokenized:

* with a chat template (the tokenizer's own, unless ``use_template=False``):
  the template applied to the conversation; targets are the tokens of every
  assistant turn's content plus the end-of-turn token that follows it;
* without one: ``[doc start] + prompt + response + [eos]`` with the response
  tokens and the eos as targets;
* plain text: ``[doc start] + text``, every text token a target.

Sequences longer than ``max_length`` are cut from the right and flagged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from infosft.errors import InputError

# Field aliases for prompt/response records, tried in order.
PAIR_ALIASES: tuple[tuple[str, str], ...] = (
    ("prompt", "response"), ("prompt", "completion"), ("question", "answer"),
    ("query", "response"), ("instruction", "output"), ("input", "output"),
)
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class RecordFormat:
    """How to read a record: ``kind`` is ``messages``, ``pair`` or ``text``; ``fields`` maps
    the canonical names (messages | prompt, response, input | text) to record keys."""

    kind: str
    fields: dict[str, str]

    def describe(self) -> str:
        return f"{self.kind} (" + ", ".join(f"{k}={v}" for k, v in self.fields.items()) + ")"


@dataclass
class TokenizedExample:
    """One example ready for a causal LM.

    ``input_ids`` and ``target_mask`` have length ``n_tokens``; ``target_mask[p]``
    says token ``p`` is supervised, i.e. ``-log P(input_ids[p] | input_ids[:p])`` is
    in the loss. ``target_mask[0]`` is always False (nothing predicts it).
    """

    input_ids: list[int]
    target_mask: list[bool]
    truncated: bool
    text: str

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_target(self) -> int:
        return sum(self.target_mask)

    def labels(self) -> list[int]:
        """HF-style labels, unshifted: the token id on targets, -100 elsewhere."""
        return [t if m else -100 for t, m in zip(self.input_ids, self.target_mask)]


def detect_format(record: dict[str, Any], fields: dict[str, str] | None = None,
                  source: str | None = None) -> RecordFormat:
    """The format of a dataset from one record's keys, or from an explicit mapping.

    ``fields`` maps canonical names to column names, e.g. ``{"prompt": "q",
    "response": "a"}``, ``{"messages": "chat"}`` or ``{"text": "body"}``.
    """
    keys = set(record)
    if fields:
        allowed = {"messages", "prompt", "response", "input", "text"}
        bad = sorted(set(fields) - allowed)
        if bad:
            raise InputError(f"unknown mapping target {bad[0]!r}; use {', '.join(sorted(allowed))}",
                             file=source, field=bad[0])
        for canon, col in fields.items():
            if col not in keys:
                raise InputError(f"mapped column {col!r} not found (columns: "
                                 f"{', '.join(sorted(keys))})", file=source, field=col)
        if "messages" in fields:
            return RecordFormat("messages", {"messages": fields["messages"]})
        if "text" in fields:
            return RecordFormat("text", {"text": fields["text"]})
        if "prompt" in fields and "response" in fields:
            return RecordFormat("pair", dict(fields))
        raise InputError("a field mapping needs messages, text, or both prompt and response",
                         file=source)
    if "messages" in keys:
        return RecordFormat("messages", {"messages": "messages"})
    if "conversations" in keys:
        return RecordFormat("messages", {"messages": "conversations"})
    for p, r in PAIR_ALIASES:
        if p in keys and r in keys:
            mapping = {"prompt": p, "response": r}
            if p == "instruction" and "input" in keys:
                mapping["input"] = "input"
            return RecordFormat("pair", mapping)
    if "text" in keys:
        return RecordFormat("text", {"text": "text"})
    raise InputError("cannot tell the record format from columns "
                     f"{', '.join(sorted(keys)) or '(none)'}; expected messages, prompt/response "
                     "(or question/answer, instruction/output, ...) or text, or give a field "
                     "mapping", file=source)


class RecordError(ValueError):
    """A record that does not fit its format; ``field`` names the offending key."""

    def __init__(self, reason: str, field: str | None):
        super().__init__(reason)
        self.reason, self.field = reason, field


def _string(record: dict[str, Any], key: str, *, required: bool = True,
            nonempty: bool = False) -> str:
    if key not in record or record[key] is None:
        if required:
            raise RecordError("missing", key)
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {type(value).__name__}", key)
    if nonempty and not value.strip():
        raise RecordError("empty", key)
    return value


def normalize(record: dict[str, Any], fmt: RecordFormat) -> list[dict[str, str]] | str:
    """A record as a conversation ``[{role, content}, ...]`` (messages and pairs) or a
    plain string (text). Raises :class:`RecordError` naming the field."""
    f = fmt.fields
    if fmt.kind == "text":
        return _string(record, f["text"], nonempty=True)
    if fmt.kind == "pair":
        prompt = _string(record, f["prompt"], nonempty="input" not in f)
        extra = _string(record, f["input"], required=False) if "input" in f else ""
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}" if prompt.strip() else extra
        if not prompt.strip():
            raise RecordError("empty", f["prompt"])
        response = _string(record, f["response"], nonempty=True)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    key = f["messages"]
    msgs = record.get(key)
    if isinstance(msgs, str):  # CSV cells and some exports hold the list as JSON text
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError:
            raise RecordError("expected a list of {role, content}, got unparseable text", key)
    if not isinstance(msgs, list) or not msgs:
        raise RecordError("expected a non-empty list of {role, content}", key)
    out = []
    for i, m in enumerate(msgs):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise RecordError(f"expected an object, got {type(m).__name__}", where)
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = {"human": "user", "gpt": "assistant"}.get(role, role)
        if role not in ROLES:
            raise RecordError(f"unknown role {role!r} (use {', '.join(ROLES)})", f"{where}.role")
        if not isinstance(content, str):
            raise RecordError(f"expected a string, got {type(content).__name__}",
                              f"{where}.content")
        if role == "assistant" and not content.strip():
            raise RecordError("empty assistant content", f"{where}.content")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise RecordError("no assistant turn to learn from", key)
    return out


def doc_start_id(tokenizer) -> int | None:
    """The token that starts a plain document: ``<|endoftext|>`` where the vocabulary
    has it (SmolLM2's BOS is ``<|im_start|>``, a chat marker), else the BOS."""
    tid = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(tid, int) and tokenizer.convert_ids_to_tokens(tid) == "<|endoftext|>":
        return tid
    return tokenizer.bos_token_id


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def tokenize(content: list[dict[str, str]] | str, tokenizer, *, max_length: int,
             use_template: bool = True) -> TokenizedExample:
    """Tokenize a normalized record (see :func:`normalize`) with its target mask."""
    if isinstance(content, str):
        ids = _encode(tokenizer, content)
        start = doc_start_id(tokenizer)
        prefix = [] if start is None else [start]
        return _truncate(prefix + ids, [False] * len(prefix) + [True] * len(ids), max_length,
                         content)
    if use_template and has_template(tokenizer):
        return _tokenize_chat(content, tokenizer, max_length)
    prompt = "".join(m["content"] for m in content[:-1])
    if content[-1]["role"] != "assistant" or any(m["role"] == "assistant" for m in content[:-1]):
        raise RecordError("without a chat template only a single final assistant turn "
                          "is supported", "messages")
    response = content[-1]["content"]
    start = doc_start_id(tokenizer)
    p_ids = ([] if start is None else [start]) + _encode(tokenizer, prompt)
    r_ids = _encode(tokenizer, response)
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    ids = p_ids + r_ids + eos
    mask = [False] * len(p_ids) + [True] * (len(r_ids) + len(eos))
    return _truncate(ids, mask, max_length, prompt + response)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _tokenize_chat(messages: list[dict[str, str]], tokenizer, max_length: int) -> TokenizedExample:
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = _assistant_spans(messages, rendered, tokenizer)
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(a < end and b > start for start, end in spans) and b > a
            for a, b in enc["offset_mapping"]]
    if mask:
        mask[0] = False
    return _truncate(list(enc["input_ids"]), mask, max_length, rendered)


def _assistant_spans(messages: list[dict[str, str]], rendered: str,
                     tokenizer) -> list[tuple[int, int]]:
    """Character spans of each assistant turn's content plus its end-of-turn token."""
    specials = sorted((t for t in tokenizer.all_special_tokens if t), key=len, reverse=True)
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False,
                                               add_generation_prompt=True) if i else ""
        if rendered.startswith(prefix):
            cursor = max(cursor, len(prefix))
        content = m["content"]
        start = rendered.find(content, cursor)
        if start < 0:  # templates that strip or trim content
            content = content.strip()
            start = rendered.find(content, cursor)
        if start < 0:
            raise RecordError("the chat template does not reproduce this assistant turn",
                              f"messages[{i}].content")
        end = start + len(content)
        for tok in specials:
            if rendered.startswith(tok, end):
                end += len(tok)
                break
        spans.append((start, end))
        cursor = end
    return spans


def _truncate(ids: list[int], mask: list[bool], max_length: int, text: str) -> TokenizedExample:
    truncated = len(ids) > max_length
    return TokenizedExample(ids[:max_length], mask[:max_length], truncated, text)


@dataclass
class PreparedExample:
    example_id: int
    source_row: int          # 1-based row (or line) in the source
    record: dict[str, Any]
    tokens: TokenizedExample


def prepare(rows: Iterable[tuple[int, dict[str, Any]]], tokenizer, *, max_length: int,
            use_template: bool = True, fields: dict[str, str] | None = None,
            source: str | None = None, unit: str = "row", skip_invalid: bool = False,
            skipped: list[dict[str, Any]] | None = None
            ) -> tuple[RecordFormat, list[PreparedExample]]:
    """Validate and tokenize records.

    Args:
        rows: ``(row_number, record)`` pairs, as :func:`infosft.records.read_records` gives.
        skip_invalid: list bad rows in ``skipped`` instead of raising.

    Returns:
        The detected format and the examples, numbered 0.. in source order.

    Raises:
        InputError: naming the source, the row and the field.
    """
    rows = list(rows)
    if not rows:
        raise InputError("no rows", file=source)
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    # From the union of all rows' keys, so one row missing a field is that row's error
    # rather than an undetectable format.
    fmt = detect_format(dict.fromkeys(k for _, rec in rows for k in rec), fields, source)
    out: list[PreparedExample] = []
    for row, record in rows:
        try:
            tokens = tokenize(normalize(record, fmt), tokenizer, max_length=max_length,
                              use_template=use_template)
            if not any(tokens.target_mask):
                raise RecordError("no target token left after truncation to max_length "
                                  f"{max_length}", fmt.fields.get("response"))
        except RecordError as e:
            if not skip_invalid:
                raise InputError(e.reason, file=source, row=row, field=e.field, unit=unit) from None
            if skipped is not None:
                skipped.append({"row": row, "field": e.field, "reason": e.reason})
            continue
        out.append(PreparedExample(len(out), row, record, tokens))
    if not out:
        raise InputError("no valid rows", file=source)
    return fmt, out
