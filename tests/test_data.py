"""Tests of infosft.data: records -> token ids + target mask.

Expected token ids are computed here independently with the tokenizer itself
(``tokenizer(text, add_special_tokens=False)`` and ``apply_chat_template``), never
with infosft.data. The tokenizer is SmolLM2-135M-Instruct's: a ChatML template that
adds a default system prompt when the conversation has none, ``<|im_end|>`` as eos,
``<|im_start|>`` as bos and ``<|endoftext|>`` as the plain-document start.

The targets of a chat-templated turn are TRL's (see ``infosft.data.chat_targets``):
everything the template writes after the generation prompt, for ChatML the content,
``<|im_end|>`` and the ``\n`` after it (``TURN_END`` here). tests/test_mask_parity.py
checks them against TRL itself.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import write_jsonl
from infosft.data import (
    RecordError,
    RecordFormat,
    detect_format,
    doc_start_id,
    normalize,
    prepare,
    tokenize,
)
from infosft.errors import InputError
from infosft.records import read_records

MAX = 512
END = "<|im_end|>"
TURN_END = END + "\n"  # what ChatML writes after an assistant's content


# ---------------------------------------------------------------- helpers


def enc(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_ids(tokenizer, messages) -> list[int]:
    return enc(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))


def runs(ex) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of consecutive target positions."""
    out, start = [], None
    for i, m in enumerate(ex.target_mask + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def targets(ex) -> list[int]:
    return [t for t, m in zip(ex.input_ids, ex.target_mask) if m]


def from_record(record, tokenizer, fields=None, **kw):
    return tokenize(normalize(record, detect_format(record, fields)), tokenizer,
                    max_length=kw.pop("max_length", MAX), **kw)


def check_wellformed(ex):
    assert len(ex.input_ids) == len(ex.target_mask) == ex.n_tokens
    assert ex.target_mask[0] is False
    assert ex.n_target == sum(ex.target_mask) > 0


# ---------------------------------------------------------------- doc start


def test_doc_start_id_is_endoftext_not_bos(tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.convert_ids_to_tokens(eot) == "<|endoftext|>"
    assert doc_start_id(tokenizer) == eot
    assert eot != tokenizer.bos_token_id  # SmolLM2's bos is <|im_start|>


# ---------------------------------------------------------------- pair, with template


@pytest.mark.parametrize("prompt,response", [
    ("Hi there", "Hello!"),
    ("What is 2+2?", "The answer is 4.\nDone."),
    ("Say hello in Japanese.", "こんにちは"),
    ("Trailing whitespace?", "Yes \n"),
])
def test_pair_with_template(tokenizer, prompt, response):
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ex = from_record({"prompt": prompt, "response": response}, tokenizer)
    check_wellformed(ex)
    assert ex.truncated is False
    assert ex.input_ids == chat_ids(tokenizer, messages)
    assert tokenizer.decode(targets(ex)) == response + TURN_END
    [(start, end)] = runs(ex)
    # Everything before the first target is the (default) system prompt, the user turn
    # and the assistant header; the token right before is the "\n" after "assistant".
    assert tokenizer.decode(ex.input_ids[start - 1]) == "\n"
    header = tokenizer.apply_chat_template(messages[:1], tokenize=False,
                                           add_generation_prompt=True)
    assert "You are a helpful AI assistant" in header
    assert ex.input_ids[:start] == enc(tokenizer, header)
    # The run goes to the end: the template's trailing "\n" is a target too.
    assert end == ex.n_tokens
    assert ex.input_ids[-2:] == enc(tokenizer, TURN_END)


def test_pair_response_with_leading_whitespace_is_fully_covered(tokenizer):
    # BPE merges the header's "\n" with leading spaces into one token; that token
    # overlaps the content and is a target, so no content character is lost.
    response = "  spaced"
    ex = from_record({"prompt": "Hi", "response": response}, tokenizer)
    check_wellformed(ex)
    assert len(runs(ex)) == 1
    assert tokenizer.decode(targets(ex)).endswith(response + TURN_END)
    header = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                           tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ex.input_ids[:runs(ex)[0][0]]) == header[:-1]


# ---------------------------------------------------------------- pair, no template


@pytest.mark.parametrize("prompt,response", [
    ("What is 2+2?", " It is 4."),
    ("Translate: cat\n", "chat"),
])
def test_pair_without_template(tokenizer, prompt, response):
    ex = from_record({"prompt": prompt, "response": response}, tokenizer, use_template=False)
    check_wellformed(ex)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos = tokenizer.convert_tokens_to_ids(END)
    p_ids, r_ids = enc(tokenizer, prompt), enc(tokenizer, response)
    assert ex.input_ids == [eot] + p_ids + r_ids + [eos]
    assert ex.target_mask == [False] * (1 + len(p_ids)) + [True] * (len(r_ids) + 1)
    assert targets(ex) == r_ids + [eos]
    assert ex.truncated is False


def test_no_template_rejects_two_assistant_turns(tokenizer):
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    with pytest.raises(RecordError):
        tokenize(messages, tokenizer, max_length=MAX, use_template=False)


# ---------------------------------------------------------------- messages

SYSTEM, U1, A1, U2, A2 = ("Be brief.", "Say yes", "yes", "Repeat: yes", "Yes, again.")
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": U1},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": U2},  # contains A1's text: must not be a target
    {"role": "assistant", "content": A2},
]
SHAREGPT = [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]),
             "value": m["content"]} for m in CONVERSATION]


@pytest.mark.parametrize("record", [
    {"messages": CONVERSATION},
    {"conversations": SHAREGPT},
    {"messages": json.dumps(CONVERSATION)},  # as in a CSV cell
], ids=["messages", "sharegpt", "json-string"])
def test_messages_multiturn(tokenizer, record):
    fmt = detect_format(record)
    assert fmt.kind == "messages"
    assert normalize(record, fmt) == CONVERSATION
    ex = tokenize(normalize(record, fmt), tokenizer, max_length=MAX)
    check_wellformed(ex)
    assert ex.input_ids == chat_ids(tokenizer, CONVERSATION)
    spans = runs(ex)
    assert len(spans) == 2
    decoded = [tokenizer.decode(ex.input_ids[a:b]) for a, b in spans]
    assert decoded == [A1 + TURN_END, A2 + TURN_END]
    assert "".join(decoded) == A1 + TURN_END + A2 + TURN_END
    for a, _ in spans:  # each run starts right after an assistant header
        assert tokenizer.decode(ex.input_ids[:a]).endswith("<|im_start|>assistant\n")
    # the non-target text holds the system and user turns, no default system prompt
    rest = tokenizer.decode([t for t, m in zip(ex.input_ids, ex.target_mask) if not m])
    assert SYSTEM in rest and U1 in rest and U2 in rest
    assert "SmolLM" not in rest


def test_same_assistant_content_twice(tokenizer):
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "y"}, {"role": "assistant", "content": "ok"}]
    ex = tokenize(messages, tokenizer, max_length=MAX)
    assert [tokenizer.decode(ex.input_ids[a:b]) for a, b in runs(ex)] == ["ok" + TURN_END] * 2


# Templates whose partial renderings are no prefixes of the whole: the turn is located by
# its content, then the end-of-turn token and the whitespace up to the next special token.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def with_template(tokenizer, template):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def test_assistant_turn_first(tokenizer):
    # The default system prompt comes first only in a whole conversation, so the empty
    # head of the first turn is no prefix of it.
    messages = [{"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "x"},
                {"role": "assistant", "content": "y"}]
    ex = tokenize(messages, tokenizer, max_length=MAX)
    assert ex.input_ids == chat_ids(tokenizer, messages)
    assert [tokenizer.decode(ex.input_ids[a:b]) for a, b in runs(ex)] == [
        "Hi!" + TURN_END, "y" + TURN_END]


def test_template_that_is_never_a_prefix(tokenizer):
    tok = with_template(tokenizer, "{{ messages | length }} turns\\n" + CHATML)
    ex = tokenize(CONVERSATION, tok, max_length=MAX)
    assert ex.input_ids == chat_ids(tok, CONVERSATION)
    assert tok.decode(ex.input_ids[:3]).startswith("5 turns")
    assert [tok.decode(ex.input_ids[a:b]) for a, b in runs(ex)] == [A1 + TURN_END,
                                                                     A2 + TURN_END]


def test_template_that_drops_earlier_turns_is_a_record_error(tokenizer):
    tok = with_template(tokenizer, CHATML.replace(
        "m['content']", "(m['content'] if loop.last or m['role'] != 'assistant' else '...')"))
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first"},
                {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"}]
    with pytest.raises(RecordError, match="does not reproduce") as e:
        tokenize(messages, tok, max_length=MAX)
    assert e.value.field == "messages[1].content"


# ---------------------------------------------------------------- plain text


@pytest.mark.parametrize("text", ["Once upon a time, there was a cat.\nThe end.",
                                  " leading space and ünïcödé"])
@pytest.mark.parametrize("use_template", [True, False])
def test_text(tokenizer, text, use_template):
    ex = from_record({"text": text}, tokenizer, use_template=use_template)
    check_wellformed(ex)
    assert ex.input_ids[0] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert ex.input_ids[1:] == enc(tokenizer, text)
    assert ex.target_mask == [False] + [True] * (ex.n_tokens - 1)
    assert tokenizer.decode(ex.input_ids[1:]) == text


# ---------------------------------------------------------------- aliases and mappings


def conv(prompt, response):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


@pytest.mark.parametrize("record,fields,kind,expected", [
    ({"prompt": "P", "response": "R"}, None, "pair", conv("P", "R")),
    ({"question": "Q", "answer": "A"}, None, "pair", conv("Q", "A")),
    ({"query": "Q", "response": "R"}, None, "pair", conv("Q", "R")),
    ({"prompt": "P", "completion": "C"}, None, "pair", conv("P", "C")),
    ({"instruction": "Do it", "input": "this", "output": "done"}, None, "pair",
     conv("Do it\n\nthis", "done")),
    ({"instruction": "Do it", "input": "", "output": "done"}, None, "pair",
     conv("Do it", "done")),
    ({"instruction": "Do it", "output": "done"}, None, "pair", conv("Do it", "done")),
    ({"input": "I", "output": "O"}, None, "pair", conv("I", "O")),
    ({"text": "T", "id": 3}, None, "text", "T"),
    ({"q": "Q", "a": "A", "prompt": "not this"}, {"prompt": "q", "response": "a"}, "pair",
     conv("Q", "A")),
    ({"body": "B", "text": "not this"}, {"text": "body"}, "text", "B"),
    ({"chat": conv("u", "v"), "text": "not this"}, {"messages": "chat"}, "messages",
     conv("u", "v")),
], ids=["prompt/response", "question/answer", "query/response", "prompt/completion",
        "instruction+input", "instruction+empty-input", "instruction-only", "input/output",
        "text", "map-pair", "map-text", "map-messages"])
def test_aliases_and_mappings(record, fields, kind, expected):
    fmt = detect_format(record, fields)
    assert fmt.kind == kind
    assert normalize(record, fmt) == expected


def test_mapped_record_tokenizes_like_canonical(tokenizer):
    mapped = from_record({"q": "Hi there", "a": "Hello!"}, tokenizer,
                         fields={"prompt": "q", "response": "a"})
    canonical = from_record({"prompt": "Hi there", "response": "Hello!"}, tokenizer)
    assert mapped.input_ids == canonical.input_ids
    assert mapped.target_mask == canonical.target_mask


# ---------------------------------------------------------------- detect_format errors


@pytest.mark.parametrize("record,fields,named", [
    ({"q": "x", "a": "y"}, {"prompt": "q", "response": "missing_col"}, ["missing_col"]),
    ({"q": "x", "a": "y"}, {"prompt": "q", "answer": "a"}, ["answer"]),
    ({"foo": "x", "bar": "y"}, None, ["foo", "bar"]),
], ids=["missing-column", "unknown-target", "unrecognizable"])
def test_detect_format_errors(record, fields, named):
    with pytest.raises(InputError) as err:
        detect_format(record, fields, source="data.jsonl")
    msg = str(err.value)
    assert "data.jsonl" in msg
    for name in named:
        assert name in msg
    if fields:
        assert err.value.field == named[0]


# ---------------------------------------------------------------- normalize errors

PAIR = RecordFormat("pair", {"prompt": "prompt", "response": "response"})
MSGS = RecordFormat("messages", {"messages": "messages"})
TEXT = RecordFormat("text", {"text": "text"})


@pytest.mark.parametrize("record,fmt,field", [
    ({"prompt": "p"}, PAIR, "response"),
    ({"prompt": "p", "response": None}, PAIR, "response"),
    ({"prompt": 7, "response": "r"}, PAIR, "prompt"),
    ({"prompt": "p", "response": ""}, PAIR, "response"),
    ({"prompt": "p", "response": " \n\t"}, PAIR, "response"),
    ({"prompt": "  ", "response": "r"}, PAIR, "prompt"),
    ({"messages": {"role": "user", "content": "hi"}}, MSGS, "messages"),
    ({"messages": []}, MSGS, "messages"),
    ({"messages": "[not json"}, MSGS, "messages"),
    ({"messages": ["hi"]}, MSGS, "messages[0]"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},
     MSGS, "messages[1].role"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
     MSGS, "messages[1].content"),
    ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]},
     MSGS, "messages[0].content"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
     MSGS, "messages"),
    ({"text": "   "}, TEXT, "text"),
    ({"text": 3}, TEXT, "text"),
], ids=["missing-response", "null-response", "int-prompt", "empty-response",
        "whitespace-response", "whitespace-prompt", "messages-dict", "messages-empty",
        "messages-bad-json", "message-not-object", "bad-role", "empty-assistant",
        "null-content", "no-assistant", "empty-text", "int-text"])
def test_normalize_errors(record, fmt, field):
    with pytest.raises(RecordError) as err:
        normalize(record, fmt)
    assert err.value.field == field
    assert err.value.reason


def test_int_prompt_reason_names_type():
    with pytest.raises(RecordError, match="int"):
        normalize({"prompt": 7, "response": "r"}, PAIR)


# ---------------------------------------------------------------- truncation


@pytest.mark.parametrize("record,use_template", [
    ({"prompt": "Tell me a story.", "response": "Once upon a time there was a cat."}, True),
    ({"prompt": "Tell me a story.", "response": "Once upon a time there was a cat."}, False),
    ({"text": "Once upon a time there was a cat who liked to sleep."}, True),
    ({"messages": CONVERSATION}, True),
], ids=["pair-template", "pair-plain", "text", "messages"])
def test_truncation(tokenizer, record, use_template):
    full = from_record(record, tokenizer, use_template=use_template)
    n = full.n_tokens
    assert full.truncated is False
    cut = from_record(record, tokenizer, use_template=use_template, max_length=n - 3)
    assert cut.n_tokens == n - 3 and cut.truncated is True
    assert cut.input_ids == full.input_ids[:n - 3]
    assert cut.target_mask == full.target_mask[:n - 3]
    exact = from_record(record, tokenizer, use_template=use_template, max_length=n)
    assert exact.truncated is False
    assert exact.input_ids == full.input_ids and exact.target_mask == full.target_mask


# ---------------------------------------------------------------- prepare

GOOD = [(1, {"prompt": "a", "response": "b"}), (2, {"prompt": "c", "response": "d"}),
        (5, {"prompt": "e", "response": "f"})]


def test_prepare_numbers_examples(tokenizer):
    fmt, examples = prepare(GOOD, tokenizer, max_length=64)
    assert fmt.kind == "pair"
    assert [e.example_id for e in examples] == [0, 1, 2]
    assert [e.source_row for e in examples] == [1, 2, 5]
    assert [e.record for e in examples] == [r for _, r in GOOD]
    for e, (_, r) in zip(examples, GOOD):
        assert tokenizer.decode(targets(e.tokens)) == r["response"] + TURN_END


MIXED = [(1, {"prompt": "a", "response": "b"}), (2, {"prompt": "c", "response": "d"}),
         (3, {"prompt": "e"}), (4, {"prompt": "g", "response": "  "}),
         (5, {"prompt": "i", "response": "j"})]


def test_prepare_skip_invalid(tokenizer):
    skipped = []
    _, examples = prepare(MIXED, tokenizer, max_length=64, skip_invalid=True, skipped=skipped)
    assert [(e.example_id, e.source_row) for e in examples] == [(0, 1), (1, 2), (2, 5)]
    assert [(s["row"], s["field"]) for s in skipped] == [(3, "response"), (4, "response")]
    assert skipped[0]["reason"] == "missing" and skipped[1]["reason"] == "empty"


@pytest.mark.parametrize("unit", ["row", "line"])
def test_prepare_error_names_file_row_field(tokenizer, unit):
    with pytest.raises(InputError) as err:
        prepare(MIXED, tokenizer, max_length=64, source="data.jsonl", unit=unit)
    msg = str(err.value)
    assert "data.jsonl" in msg and f"{unit} 3" in msg and "response" in msg
    assert (err.value.row, err.value.field) == (3, "response")


def test_prepare_from_jsonl_file(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"question": "q1", "answer": "a1"}, {"question": "q2", "answer": 5}])
    raw = read_records(path)
    with pytest.raises(InputError) as err:
        prepare(raw.rows, tokenizer, max_length=64, source=raw.source, unit=raw.unit)
    msg = str(err.value)
    assert "train.jsonl" in msg and "line 2" in msg and "answer" in msg


def test_prepare_truncation_leaving_no_target_is_an_error(tokenizer):
    long_prompt = "word " * 50
    rows = [(1, {"prompt": "a", "response": "b"}), (2, {"prompt": long_prompt, "response": "x"})]
    with pytest.raises(InputError, match="truncation") as err:
        prepare(rows, tokenizer, max_length=40, source="d.jsonl")
    assert "row 2" in str(err.value)
    skipped = []
    _, examples = prepare(rows, tokenizer, max_length=40, skip_invalid=True, skipped=skipped)
    assert [e.source_row for e in examples] == [1]
    assert [s["row"] for s in skipped] == [2] and "truncation" in skipped[0]["reason"]


def test_prepare_no_rows(tokenizer):
    with pytest.raises(InputError):
        prepare([], tokenizer, max_length=64)
    with pytest.raises(InputError, match="no valid rows"):
        prepare([(1, {"prompt": "a", "response": " "})], tokenizer, max_length=64,
                skip_invalid=True)


BAD_FIRST = [(1, {"prompt": "a"}), (2, {"prompt": "c", "response": "d"})]


def test_prepare_skips_bad_first_row(tokenizer):
    skipped = []
    _, examples = prepare(BAD_FIRST, tokenizer, max_length=64, skip_invalid=True,
                          skipped=skipped)
    assert [e.source_row for e in examples] == [2]
    assert [(s["row"], s["field"]) for s in skipped] == [(1, "response")]


def test_prepare_bad_first_row_error_names_row_and_field(tokenizer):
    with pytest.raises(InputError) as err:
        prepare(BAD_FIRST, tokenizer, max_length=64, source="data.jsonl")
    assert "row 1" in str(err.value) and "response" in str(err.value)


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize("record,use_template", [
    ({"prompt": "Hi there", "response": "Hello!"}, True),
    ({"prompt": "Hi there", "response": "Hello!"}, False),
    ({"text": "Just text."}, True),
    ({"messages": CONVERSATION}, True),
])
def test_labels(tokenizer, record, use_template):
    ex = from_record(record, tokenizer, use_template=use_template)
    labels = ex.labels()
    assert len(labels) == ex.n_tokens
    for tok, mask, lab in zip(ex.input_ids, ex.target_mask, labels):
        assert lab == (tok if mask else -100)
    assert labels[0] == -100
    assert sum(lab != -100 for lab in labels) == ex.n_target > 0
