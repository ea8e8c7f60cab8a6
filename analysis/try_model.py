"""Try the model: one prompt answered greedily by the base and by the tuned model, side
by side, every generated token with its probability under the model that wrote it and
under the other one. Where the other model finds a token unlikely, the two models part.

The prompt goes through the tokenizer's chat template as a user turn (as the scorer's
conversations do) and is refused when it holds a special token's text, which the
tokenizer would read as a control token.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import torch

from infosft.data import special_texts
from infosft.errors import InfosftError

TOKEN_SCHEMA = {"position": pl.Int32, "token": pl.String, "token_id": pl.Int64,
                "q_self": pl.Float64, "q_other": pl.Float64}


def prompt_ids(tokenizer, prompt: str, *, use_template: bool = True) -> list[int]:
    """The prompt's token ids: a user turn and the generation prompt when the tokenizer
    has a chat template (and ``use_template``), else the plain text."""
    if not prompt.strip():
        raise InfosftError("the prompt is empty")
    found = [(at, tok) for tok in special_texts(tokenizer) if (at := prompt.find(tok)) >= 0]
    if found:
        at, tok = min(found)
        raise InfosftError(f"the prompt contains the special token {tok!r} at character "
                           f"{at + 1}; remove it (the model would read it as a control token)")
    if use_template and getattr(tokenizer, "chat_template", None):
        return list(tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True,
            return_dict=False))
    return tokenizer(prompt)["input_ids"]


@torch.inference_mode()
def continuation_logprobs(model, ids: list[int], start: int) -> list[float]:
    """``log P(ids[t] | ids[:t])`` under ``model`` for every ``t >= start``."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    logits = model(x).logits[0, start - 1:-1].float()
    return logits.log_softmax(-1).gather(1, x[0, start:, None])[:, 0].tolist()


@torch.inference_mode()
def greedy(model, tokenizer, ids: list[int], max_new_tokens: int) -> list[int]:
    """The greedy continuation of ``ids`` up to (not including) an end-of-turn token."""
    from transformers import GenerationConfig

    stop = sorted({t for t in (tokenizer.eos_token_id,
                               getattr(model.generation_config, "eos_token_id", None))
                   if isinstance(t, int)})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop or [0])[0]
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens,
                              eos_token_id=stop or None, pad_token_id=pad)
    device = next(model.parameters()).device
    out = model.generate(input_ids=torch.tensor([ids], device=device),
                         attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                         generation_config=config)[0, len(ids):].tolist()
    return out[:next((i for i, t in enumerate(out) if t in stop), len(out))]


def side_by_side(base, tuned, tokenizer, prompt: str, *, max_new_tokens: int = 64,
                 use_template: bool = True) -> dict[str, Any]:
    """Both models' greedy answers to ``prompt``.

    Returns ``prompt_tokens`` (how many) and, for ``base`` and ``tuned``, ``text`` and
    ``tokens``: a frame of ``position`` (0-based in the answer), ``token``, ``token_id``,
    ``q_self`` (its probability under the model that wrote it) and ``q_other`` (under the
    other model). Both models must share ``tokenizer``.
    """
    ids = prompt_ids(tokenizer, prompt, use_template=use_template)
    out: dict[str, Any] = {"prompt_tokens": len(ids)}
    for who, model, other in (("base", base, tuned), ("tuned", tuned, base)):
        gen = greedy(model, tokenizer, ids, max_new_tokens)
        rows = []
        if gen:
            full = ids + gen
            mine = continuation_logprobs(model, full, len(ids))
            theirs = continuation_logprobs(other, full, len(ids))
            rows = [{"position": i, "token": tokenizer.decode([t]), "token_id": t,
                     "q_self": math.exp(a), "q_other": math.exp(b)}
                    for i, (t, a, b) in enumerate(zip(gen, mine, theirs))]
        out[who] = {"text": tokenizer.decode(gen, skip_special_tokens=True),
                    "tokens": pl.DataFrame(rows, schema=TOKEN_SCHEMA)}
    return out
