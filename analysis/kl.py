"""Per-token KL(base || tuned) on target positions: a joint pass of two models.

Forgetting is more than a change of the target tokens' likelihood: a fine-tune can
keep ``logp(y_t)`` and still move the rest of the next-token distribution. The KL
from the base model's distribution to the tuned model's, at every position that
predicts a target, measures that. Both models run on the same batch; the
vocabulary projections run in row chunks, so at most two ``(chunk, V)`` fp32
log-softmax blocks exist at once (never a ``[B, T, V]`` pair).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl
import torch

from infosft.analysis.score import ScoreConfig, Scorer, batches_by_budget, shared_prefix
from infosft.data import PreparedExample
from infosft.errors import InfosftError
from infosft.memory import release_freed_memory
from infosft.packed_linear import packed_linears

KL_SCHEMA = {"example_id": pl.Int32, "position": pl.Int32, "kl": pl.Float32}


def _softcapped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return torch.tanh(logits / softcap) * softcap if softcap else logits


@torch.inference_mode()
def kl_from_hidden(h_base: torch.Tensor, h_tuned: torch.Tensor, head_base: torch.nn.Module,
                   head_tuned: torch.nn.Module, *, chunk: int = 256,
                   softcap_base: float | None = None,
                   softcap_tuned: float | None = None) -> torch.Tensor:
    """KL(base || tuned) of the next-token distributions at ``N`` positions.

    Args:
        h_base: ``(N, H_b)`` final hidden states of the base model.
        h_tuned: ``(N, H_t)`` final hidden states of the tuned model, same positions.
        head_base, head_tuned: output projections to the same vocabulary ``V``.
        chunk: rows projected at a time; peak extra memory about ``4 * chunk * V`` floats.

    Returns:
        ``(N,)`` float32 on CPU, in nats: ``sum_v p_base(v) (log p_base(v) - log p_tuned(v))``,
        clamped at 0 (rounding can give -1e-7 where the two distributions agree).
    """
    out = []
    for s in range(0, h_base.shape[0], chunk):
        lb = torch.log_softmax(_softcapped(head_base(h_base[s:s + chunk]).float(),
                                           softcap_base), dim=-1)          # (n, V)
        lt = torch.log_softmax(_softcapped(head_tuned(h_tuned[s:s + chunk]).float(),
                                           softcap_tuned), dim=-1)         # (n, V)
        if lb.shape[-1] != lt.shape[-1]:
            raise InfosftError(f"the base and tuned models have different vocabularies "
                               f"({lb.shape[-1]} vs {lt.shape[-1]} logits)")
        out.append((lb.exp() * (lb - lt)).sum(-1).clamp_min(0).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _batch_tensors(batch: list[PreparedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``ids (B, T)`` and ``target (B, T)`` bool mask of a batch."""
    T = max(ex.tokens.n_tokens for ex in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    target = torch.zeros((len(batch), T), dtype=torch.bool)
    for b, ex in enumerate(batch):
        n = ex.tokens.n_tokens
        ids[b, :n] = torch.tensor(ex.tokens.input_ids)
        target[b, :n] = torch.tensor(ex.tokens.target_mask)
    return ids, target


@torch.inference_mode()
def kl_batch(base: Scorer, tuned: Scorer, batch: list[PreparedExample]) -> pl.DataFrame:
    """``example_id``, ``position``, ``kl`` for every target token of a batch."""
    ids, target = _batch_tensors(batch, base.pad_id)
    b_idx, p_idx = target.nonzero(as_tuple=True)            # row-major: example, position
    rows = []
    for scorer in (base, tuned):
        hidden = scorer.body(ids)                          # (B, T - prefix, H)
        h_idx = (p_idx - 1 - scorer.prefix_len).to(scorer.device)
        rows.append(hidden[b_idx.to(scorer.device), h_idx])
    kl = kl_from_hidden(rows[0], rows[1].to(rows[0].device), base.lm_head, tuned.lm_head,
                        chunk=base.cfg.head_chunk, softcap_base=base.softcap,
                        softcap_tuned=tuned.softcap)
    example_ids = np.array([ex.example_id for ex in batch], dtype=np.int32)[b_idx.numpy()]
    return pl.DataFrame({"example_id": example_ids,
                         "position": p_idx.numpy().astype(np.int32),
                         "kl": kl.numpy().astype(np.float32)}, schema=KL_SCHEMA)


def joint_kl(base_model, tuned_model, tokenizer, examples: list[PreparedExample], *,
             token_budget: int | None = None, head_chunk: int = 256,
             on_batch: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """Per-token KL(base || tuned) over the target tokens of ``examples``.

    Both models must share the tokenizer the examples were prepared with. The shared
    token prefix (a chat template's system prompt) runs once per model, as in scoring.
    ``on_batch(done_tokens, total_tokens)`` is called after every batch (for progress).
    On CPU the models' linear layers run on packed weights while this runs
    (``infosft.packed_linear``): do not use the models from another thread meanwhile.

    Returns:
        ``example_id`` (i32), ``position`` (i32), ``kl`` (f32), sorted.
    """
    if not examples:
        return pl.DataFrame(schema=KL_SCHEMA)
    cfg = ScoreConfig(source="", out="", token_budget=token_budget, head_chunk=head_chunk)
    prefix = shared_prefix(examples)
    # pieces=[]: the token texts are not needed here and take seconds to decode.
    base = Scorer(base_model, tokenizer, cfg, prefix=prefix, pieces=[])
    tuned = Scorer(tuned_model, tokenizer, cfg, prefix=prefix, pieces=[])
    total = sum(ex.tokens.n_tokens for ex in examples)
    done, frames = 0, []
    with packed_linears(base_model, base.budget), packed_linears(tuned_model, tuned.budget):
        for batch_idx in batches_by_budget([ex.tokens.n_tokens for ex in examples], base.budget):
            batch = [examples[j] for j in batch_idx]
            frames.append(kl_batch(base, tuned, batch))
            release_freed_memory()
            done += sum(ex.tokens.n_tokens for ex in batch)
            if on_batch:
                on_batch(done, total)
    return pl.concat(frames).sort("example_id", "position")


def kl_summary(kl: pl.DataFrame) -> dict[str, float | int]:
    """Token-level mean, median and 95th percentile of a KL frame, and its token count."""
    col = pl.col("kl").cast(pl.Float64)
    row = kl.select(col.mean().alias("mean_kl"), col.median().alias("median_kl"),
                    col.quantile(0.95, "linear").alias("p95_kl"),
                    pl.len().alias("target_tokens")).row(0, named=True)
    return {k: (float(v) if v is not None and k != "target_tokens" else v)
            for k, v in row.items()}

