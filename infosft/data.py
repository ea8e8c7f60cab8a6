"""Records -> token ids + target mask: the one definition shared by scoring and training.

A record is normalized to a conversation (a list of ``{role, content}``) or a
plain text, then tokenized:

* with a chat template (the tokenizer's own, unless ``use_template=False``):
  the template applied to the conversation; the targets are what TRL's SFTTrainer
  supervises (:func:`chat_targets`), so exported labels and weights line up with
  TRL's labels: the ``{% generation %}`` blocks of a template that has them (TRL's
  ``assistant_only_loss``), else everything the template writes for each assistant
  turn after the generation prompt (TRL's prompt/completion rule, turn by turn; for
  ChatML the content, ``<|im_end|>`` and the ``\\n`` after it). A token is a target
  when its characters overlap a target span;
* without one: ``[doc start] + prompt + response + [eos]`` with the response
  tokens and the eos as targets;
* plain text: ``[doc start] + text``, every text token a target.

Sequences longer than ``max_length`` are cut from the right and flagged. Only a
prefix of a long text is tokenized, as long as it provably gives the same first
tokens (see :func:`_encode`), so memory is bounded by ``max_length``, not the record.

User text holding a special token's text (``<|im_end|>``...) is refused: the tokenizer
would read it as the control token itself, and a row could fake a turn.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from infosft.errors import InputError

#: The label of a position that is not supervised (Hugging Face's, PyTorch's
#: ``ignore_index``): the one definition, for labels, exports, the loss and the collator.
IGNORE_INDEX = -100

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
        """HF-style labels, unshifted: the token id on targets, IGNORE_INDEX (-100)
        elsewhere."""
        return [t if m else IGNORE_INDEX for t, m in zip(self.input_ids, self.target_mask)]


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


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_unicode(value: str, field: str) -> str:
    """``value`` unless it holds a lone surrogate (a JSON escape such as ``\\ud800``, or
    an undecodable byte kept by surrogateescape): no tokenizer can encode it."""
    bad = _SURROGATE.search(value)
    if bad:
        raise RecordError(f"not valid Unicode (lone surrogate {bad.group()!r} at character "
                          f"{bad.start() + 1})", field)
    return value


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
    return _check_unicode(value, key)


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
        except (ValueError, RecursionError):  # (also: nested too deeply, 4300+ digit ints)
            raise RecordError("expected a list of {role, content}, got unparseable text",
                              key) from None
    if not isinstance(msgs, list) or not msgs:
        raise RecordError("expected a non-empty list of {role, content}", key)
    out = []
    for i, m in enumerate(msgs):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise RecordError(f"expected an object, got {type(m).__name__}", where)
        role = m.get("role", m.get("from"))
        role = {"human": "user", "gpt": "assistant"}.get(role, role) if isinstance(
            role, str) else role
        if role not in ROLES:
            shown = repr(role) if len(repr(role)) <= 40 else repr(role)[:37] + "..."
            raise RecordError(f"unknown role {shown} (use {', '.join(ROLES)})", f"{where}.role")
        content = _content(m.get("content", m.get("value")), f"{where}.content")
        if role == "assistant" and not content.strip():
            raise RecordError("empty assistant content", f"{where}.content")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise RecordError("no assistant turn to learn from", key)
    return out


def _content(content: Any, where: str) -> str:
    """A message's content as one string: a string, or OpenAI-style parts
    ``[{"type": "text", "text": ...}, ...]`` joined as they are (only text parts)."""
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RecordError(f"only text parts {{\"type\": \"text\", \"text\": ...}} are "
                                  f"supported, got {str(kind)[:40]!r}", f"{where}[{j}]")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise RecordError(f"expected a string, got {type(content).__name__}", where)
    return _check_unicode(content, where)


def special_texts(tokenizer) -> list[str]:
    """The text of every special token: the named ones and added tokens marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    texts = set(tokenizer.all_special_tokens) | {
        str(t) for t in added.values() if getattr(t, "special", False)}
    return sorted((t for t in texts if t), key=len, reverse=True)


def check_specials(record: dict[str, Any], fmt: RecordFormat,
                   content: list[dict[str, str]] | str, specials: list[str]) -> None:
    """Refuse user text that holds a special token's text: the tokenizer would read it as
    the control token itself (``<|im_end|>\\n<|im_start|>assistant`` in a prompt fakes an
    assistant turn), with or without a chat template."""
    if fmt.kind == "messages":
        key = fmt.fields["messages"]
        texts = [(f"{key}[{i}].content", m["content"]) for i, m in enumerate(content)]
    else:
        texts = [(col, record.get(col)) for col in fmt.fields.values()]
    for field, text in texts:
        if not isinstance(text, str):
            continue
        found = [(at, tok) for tok in specials if (at := text.find(tok)) >= 0]
        if found:  # the first in the text (specials are longest first: ties go to the longest)
            at, tok = min(found, key=lambda f: f[0])
            raise RecordError(f"contains the special token {tok!r} at character {at + 1}; "
                              "the tokenizer would read it as a control token, not text", field)


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
    start = doc_start_id(tokenizer)
    prefix = [] if start is None else [start]
    if isinstance(content, str):
        ids, _ = _encode(tokenizer, content, max_length - len(prefix))
        return _truncate(prefix + ids, [False] * len(prefix) + [True] * len(ids), max_length,
                         content)
    if use_template and has_template(tokenizer):
        return _tokenize_chat(content, tokenizer, max_length)
    prompt = "".join(m["content"] for m in content[:-1])
    if content[-1]["role"] != "assistant" or any(m["role"] == "assistant" for m in content[:-1]):
        raise RecordError("without a chat template only a single final assistant turn "
                          "is supported", "messages")
    response = content[-1]["content"]
    p_ids = prefix + _encode(tokenizer, prompt, max_length - len(prefix))[0]
    r_ids = _encode(tokenizer, response, max(0, max_length - len(p_ids)))[0]
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    ids = p_ids + r_ids + eos
    mask = [False] * len(p_ids) + [True] * (len(r_ids) + len(eos))
    return _truncate(ids, mask, max_length, prompt + response)


# Tokenizing costs memory in proportion to the text (a 50 MB record took 9 GB), though
# only max_length tokens are kept. So a long text is tokenized from a prefix, growing
# geometrically from this many characters per token wanted until it yields enough
# tokens. The prefix ends at a cut point (_CUT_RULES): a word end ("x| y") or a letter
# before punctuation ("x|." "語|。", for text without spaces). Every token of such a
# prefix is a token of the whole text: added tokens are split off first (none here can
# span a cut point, checked), the pre-tokenizer then always splits there (checked on a
# probe: true of the GPT-2, Llama-3 and Qwen byte-level regexes and of whitespace
# splitters; Metaspace with split only at spaces) and the model tokenizes each piece
# alone. Texts without any cut point (one giant "word": a base64 blob, a run of one
# letter) and other tokenizers (one BPE over whole segments, normalizers that rewrite
# spaces) get the whole text when it is short; a longer one (_AGREE_FROM characters)
# is cut where two prefixes, one twice as long as the other, agree on the tokens kept:
# the rest of the text could change them only through a chain of merges longer than
# the shorter prefix, which is no proof, but memory stays bounded.
_CHARS_PER_TOKEN = 8
_AGREE_FROM = 1 << 20
_CUT_RULES = (r"\S(?= )", r"[^\W_](?=[.,!?;:\u3002\uff0c\u3001\uff01\uff1f\uff1a\uff1b])")
_PROBE = "ab cd, 12 ef! (g) 'h i\tj k.\nl m \u65e5\u672c\u3002\u8a9e\u3001x;y z?"
_PER_CHAR_NORMALIZERS = {"Sequence", "NFC", "NFD", "NFKC", "NFKD", "Lowercase",
                         "StripAccents", "BertNormalizer"}


def _encode(tokenizer, text: str, limit: int, offsets: bool = False
            ) -> tuple[list[int], list[tuple[int, int]] | None]:
    """``tokenizer(text)``'s ids (and offsets) as tokenizing all of ``text`` gives them:
    all of them when there are at most ``limit``, else at least the first ``limit + 1``
    (enough to tell that it was truncated)."""
    n = _CHARS_PER_TOKEN * (limit + 2)
    last_cut = cut_points(tokenizer) if len(text) > n else None
    if last_cut is not None:
        while n < len(text):
            found = last_cut.match(text, 0, n)
            if found:
                ids, offs = _run(tokenizer, text[:found.end()], offsets)
                # The last token's offsets may still differ (an added token with rstrip
                # would take the following spaces), so it is never kept.
                if len(ids) >= limit + 2:
                    return ids[:limit + 1], offs and offs[:limit + 1]
            n *= 2
    if len(text) >= _AGREE_FROM:
        n = max(_CHARS_PER_TOKEN * (limit + 2), 1 << 16)
        while 2 * n < len(text):
            ids, offs = _run(tokenizer, text[:n], offsets)
            if len(ids) >= limit + 2:
                longer = _run(tokenizer, text[:2 * n], offsets)
                if (ids[:limit + 1], offs and offs[:limit + 1]) == (
                        longer[0][:limit + 1], longer[1] and longer[1][:limit + 1]):
                    return ids[:limit + 1], offs and offs[:limit + 1]
            n *= 2
    return _run(tokenizer, text, offsets)


def _run(tokenizer, text: str, offsets: bool):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
    return list(enc["input_ids"]), (list(enc["offset_mapping"]) if offsets else None)


def cut_points(tokenizer) -> re.Pattern | None:
    """A pattern whose ``match(text, 0, n).end()`` is the last cut point before ``n`` (see
    ``_CHARS_PER_TOKEN``), with the rules that hold for this tokenizer; None if none do."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return None
    if backend.normalizer is not None:
        kinds = re.findall(r'"type":\s*"(\w+)"', backend.normalizer.__getstate__().decode())
        if set(kinds) - _PER_CHAR_NORMALIZERS:
            return None
    starts = {a for _, (a, _) in backend.pre_tokenizer.pre_tokenize_str(_PROBE)}
    added = [str(t) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()]
    rules = [rule for rule in _CUT_RULES
             if all(m.end() in starts for m in re.finditer(rule, _PROBE))
             and not any(re.search(rule + ".", t, re.S) for t in added)]
    return re.compile(".*(?:" + "|".join(rules) + ")", re.S) if rules else None


def _tokenize_chat(messages: list[dict[str, str]], tokenizer, max_length: int) -> TokenizedExample:
    template = tokenizer.get_chat_template()
    rendered, spans = chat_targets(messages, tokenizer, template)
    ids, offsets = _encode(tokenizer, rendered, max_length, offsets=True)
    mask = [any(a < end and b > start for start, end in spans) and b > a for a, b in offsets]
    if mask:
        mask[0] = False
    return _truncate(ids, mask, max_length, rendered)


# The target rule of chat-templated records, recorded as ``targets`` in a scored run's
# meta.json and in exports. It is TRL's, so that the labels and weights infosft scores
# and exports line up token for token with the labels TRL's SFTTrainer trains on
# (assistant_only_loss on messages, completion_only_loss on prompt/completion). Runs
# scored before (no ``targets`` field) supervised each assistant turn's content plus
# the end-of-turn token only: without ChatML's newline after ``<|im_end|>``.
TARGET_RULE = "trl"

# as transformers' render_jinja_template tells a template with generation blocks
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_blocks(template: str) -> bool:
    """Whether a chat template marks the assistant's text with ``{% generation %}``."""
    return bool(_GENERATION_TAG.search(template))


def _render(tokenizer, template: str, messages: list[dict[str, str]], *,
            add_generation_prompt: bool = False, blocks: bool = False
            ) -> tuple[str, list[tuple[int, int]] | None]:
    """``tokenizer.apply_chat_template(messages, tokenize=False)``, rendered as it renders
    it (the same call, the tokenizer's special tokens as template variables), and with
    ``blocks`` the character spans of the template's generation blocks. Called directly,
    it renders an empty conversation too (the head before a first assistant turn)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, indices = render_jinja_template(
        conversations=[messages], chat_template=template, return_assistant_tokens_mask=blocks,
        add_generation_prompt=add_generation_prompt, **tokenizer.special_tokens_map)
    return rendered[0], [tuple(span) for span in indices[0]] if blocks else None


def chat_targets(messages: list[dict[str, str]], tokenizer, template: str
                 ) -> tuple[str, list[tuple[int, int]]]:
    """The conversation rendered with ``template`` and the character spans of its targets.

    The rule (:data:`TARGET_RULE`) is TRL's, so that exported labels and weights line up
    with the labels TRL trains on:

    * a template with ``{% generation %}`` blocks: the characters inside them, exactly
      TRL's ``assistant_only_loss=True`` (e.g. TRL's ``qwen2_5_training`` marks the
      ``\\n`` after ``<|im_start|>assistant``, the content and ``<|im_end|>\\n``);
    * otherwise, for each assistant turn ``i``: the characters from the end of
      ``render(messages[:i], add_generation_prompt=True)`` to the end of
      ``render(messages[:i + 1])``, everything the template writes for the turn after
      its generation prompt (for ChatML: content, ``<|im_end|>`` and ``\\n``), i.e. TRL's
      conversational prompt/completion rule, turn by turn. Where those renderings are
      no prefixes of the whole (templates that rewrite earlier turns), the turn is found
      by its content instead (:func:`_located_turn`); TRL has no answer there.
    """
    if has_generation_blocks(template):
        rendered, spans = _render(tokenizer, template, messages, blocks=True)
        spans = [(a, b) for a, b in spans if b > a]
        if not spans:
            raise RecordError("the chat template's {% generation %} blocks mark nothing in "
                              "this conversation", "messages")
        return rendered, spans
    rendered = _render(tokenizer, template, messages)[0]
    specials = sorted((t for t in tokenizer.all_special_tokens if t), key=len, reverse=True)
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            # A turn located by its content (below) comes after this message's text.
            at = rendered.find(m["content"], cursor)
            cursor = cursor if at < 0 else at + len(m["content"])
            continue
        head = _render_part(tokenizer, template, messages[:i], add_generation_prompt=True)
        turn = _render_part(tokenizer, template, messages[:i + 1])
        if (head is not None and turn is not None and cursor <= len(head) < len(turn)
                and rendered.startswith(head) and rendered.startswith(turn)):
            span = (len(head), len(turn))
        else:
            span = _located_turn(m["content"], rendered, cursor, head, specials, i)
        spans.append(span)
        cursor = span[1]
    return rendered, spans


def _render_part(tokenizer, template: str, messages: list[dict[str, str]],
                 add_generation_prompt: bool = False) -> str | None:
    """A part of the conversation rendered, or None where the template refuses it (one
    that reads ``messages[0]`` fails on the empty head of an assistant turn that comes
    first): the turn is then located as when the part is no prefix of the whole."""
    from jinja2.exceptions import TemplateError

    try:
        return _render(tokenizer, template, messages,
                       add_generation_prompt=add_generation_prompt)[0]
    except TemplateError:
        return None


def _located_turn(content: str, rendered: str, cursor: int, head: str | None,
                  specials: list[str], i: int) -> tuple[int, int]:
    """The span of an assistant turn whose renderings are no prefixes of the whole (a
    template that rewrites earlier turns, or puts a default system prompt first only in
    a whole conversation): its content found in ``rendered`` after ``cursor``, the
    end-of-turn special token right after it and the whitespace that follows up to the
    next special token or the end (the template's separator, as TRL would take it)."""
    if head is not None and rendered.startswith(head):
        cursor = max(cursor, len(head))
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
            space = re.compile(r"\s*").match(rendered, end).end()
            if space == len(rendered) or any(rendered.startswith(t, space) for t in specials):
                end = space
            break
    return start, end


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
    specials = special_texts(tokenizer)
    for row, record in rows:
        try:
            content = normalize(record, fmt)
            check_specials(record, fmt, content, specials)
            tokens = tokenize(content, tokenizer, max_length=max_length,
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
