"""Task accuracy of greedy answers: does the model get the final answer right?

Likelihood says how a fine-tune moved the reference tokens; on math data users
also want to know whether the model now *answers* correctly. For a few held-out
examples, each model answers greedily from the same prompt the scorer used
(the example's tokens up to its last assistant turn, so the chat template is the
one of ``infosft.data``), and the final answer is compared with the reference's
(see :mod:`analysis.answers`).
"""

from __future__ import annotations

from typing import Callable

import polars as pl
import torch

from infosft.analysis.answers import answer_style, exact_match, extract_answer, usable_reference
from infosft.data import PreparedExample, RecordFormat, RecordError, normalize

ITEM_SCHEMA = {"example_id": pl.Int32, "source_row": pl.Int32, "reference_text": pl.String,
               "reference": pl.String}


def last_turn_start(mask: list[bool]) -> int | None:
    """Index of the first token of the last run of targets (the last assistant turn),
    None without targets. ``mask`` is a ``(T,)`` target mask."""
    ends = [i for i, m in enumerate(mask) if m]
    if not ends:
        return None
    start = ends[-1]
    while start > 0 and mask[start - 1]:
        start -= 1
    return start


def reference_text(ex: PreparedExample, fmt: RecordFormat) -> str | None:
    """The content of an example's last assistant turn (None for plain text records)."""
    if fmt.kind == "text":
        return None
    try:
        conv = normalize(ex.record, fmt)
    except RecordError:
        return None
    answers = [m["content"] for m in conv if m["role"] == "assistant"]
    return answers[-1] if answers else None


def accuracy_items(examples: list[PreparedExample], fmt: RecordFormat,
                   limit: int) -> tuple[str | None, pl.DataFrame]:
    """The answer style of a task set and the first ``limit`` examples to answer.

    Only untruncated examples whose reference states an answer in the set's style are
    used (in a mixed set, the code rows of a math + code set are left out).

    Returns:
        (style, frame): style is ``"marker"``, ``"last_number"`` or None (not math, empty
        frame); the frame has ``example_id``, ``source_row``, ``reference_text`` and
        ``reference`` (the normalized answer).
    """
    refs = [reference_text(ex, fmt) for ex in examples]
    style = answer_style(r for r in refs if r is not None)
    rows = []
    if style and limit > 0:
        for ex, ref in zip(examples, refs):
            if ref is None or ex.tokens.truncated or not usable_reference(ref, style):
                continue
            rows.append({"example_id": ex.example_id, "source_row": ex.source_row,
                         "reference_text": ref, "reference": extract_answer(ref)})
            if len(rows) >= limit:
                break
    return style, pl.DataFrame(rows, schema=ITEM_SCHEMA)


def stop_ids(examples: list[PreparedExample], tokenizer) -> list[int]:
    """Token ids that end an answer: the eos and the end-of-turn token the chat template
    puts after assistant content (the last special token of an untruncated example's last
    target run: the targets may go on past it, as ChatML's ``\\n`` after ``<|im_end|>``
    does; content holds no special token, see ``infosft.data.check_specials``)."""
    special = set(tokenizer.all_special_ids)
    out = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for ex in examples:
        mask, ids = ex.tokens.target_mask, ex.tokens.input_ids
        start = last_turn_start(mask)
        if ex.tokens.truncated or start is None:
            continue
        end = start
        while end < len(mask) and mask[end]:
            end += 1
        last = next((t for t in reversed(ids[start:end]) if t in special), None)
        if last is not None:
            out.add(last)
    return sorted(out)


def prompt_ids(ex: PreparedExample) -> list[int]:
    """The tokens a model answers from: everything before the last assistant turn."""
    start = last_turn_start(ex.tokens.target_mask)
    return ex.tokens.input_ids[:start]


@torch.inference_mode()
def greedy_generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int,
                    stop: list[int], batch_size: int = 8,
                    on_batch: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy continuations of token prompts, decoded without special tokens.

    Prompts are sorted by length and left-padded in batches of ``batch_size``
    (``(B, T)`` ids with an attention mask), so little compute goes to padding.
    ``on_batch(done, total)`` is called after every batch.
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens,
                              eos_token_id=stop, pad_token_id=pad)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    stop_set = set(stop)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        T = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for b, i in enumerate(idx):
            n = len(prompts[i])
            ids[b, T - n:] = torch.tensor(prompts[i])
            mask[b, T - n:] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             generation_config=config)[:, T:].tolist()
        for b, i in enumerate(idx):
            new = gen[b]
            cut = next((k for k, t in enumerate(new) if t in stop_set), len(new))
            out[i] = tokenizer.decode(new[:cut], skip_special_tokens=True)
        if on_batch:
            on_batch(min(s + batch_size, len(order)), len(order))
    return out


def with_answers(items: pl.DataFrame, outputs: list[str], prefix: str) -> pl.DataFrame:
    """Adds ``{prefix}_output`` (the generated text), ``{prefix}_answer`` (its normalized
    final answer) and ``{prefix}_correct`` (exact match with ``reference``)."""
    answers = [extract_answer(o) for o in outputs]
    correct = [exact_match(a, r) for a, r in zip(answers, items["reference"].to_list())]
    return items.with_columns(pl.Series(f"{prefix}_output", outputs, dtype=pl.String),
                              pl.Series(f"{prefix}_answer", answers, dtype=pl.String),
                              pl.Series(f"{prefix}_correct", correct, dtype=pl.Boolean))


def accuracy_summary(frame: pl.DataFrame) -> dict[str, float | int | None]:
    """``n``, ``base``, ``tuned`` (share correct), ``delta`` (tuned - base), and the
    examples behind the change: ``lost`` (right before, wrong after) and ``gained``."""
    n = frame.height
    if not n:
        return {"n": 0, "base": None, "tuned": None, "delta": None, "lost": 0, "gained": 0}
    base = float(frame["base_correct"].mean())
    tuned = float(frame["tuned_correct"].mean())
    lost = int((frame["base_correct"] & ~frame["tuned_correct"]).sum())
    gained = int((~frame["base_correct"] & frame["tuned_correct"]).sum())
    return {"n": n, "base": base, "tuned": tuned, "delta": tuned - base, "lost": lost,
            "gained": gained}
