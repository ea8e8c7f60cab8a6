"""The scoring engine: per-token statistics and KL of a loaded model, as arrays.

Works on a model and tokenizer it is given and on prepared examples
(``infosft.data.PreparedExample``); it reads and writes no files. The Parquet layer
(``analysis/score.py``, ``analysis/kl.py``) orchestrates it.

Examples are sorted by length and packed into batches by a padded-token budget
(:func:`batches_by_budget`). The transformer body runs on every position, but the
vocabulary projection (a large share of a small model's FLOPs) runs only on the
positions that predict a target token, in row chunks, so no ``[batch, seq, vocab]``
tensor ever exists. A prefix shared by all examples (:func:`shared_prefix`, e.g. a chat
template's system prompt) runs once; its key/value cache is reused for every batch.

Besides the usual statistics each target gets ``entropy_top20`` (the entropy of the
renormalized top-20, :func:`infosft.schemes.eaft.top_entropy`, from the same top-k pass)
and, when a reference model scores alongside (``Scorer(..., reference=...)``),
``logp_ref``: the reference's log-prob of the same target (the excess-loss scheme's field).
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch
from transformers import DynamicCache

from infosft.data import PreparedExample
from infosft.errors import InfosftError
from infosft.memory import release_freed_memory
from infosft.packed_linear import packed_linears
from infosft.schemes.eaft import TOP as ENTROPY_TOP

STATS = ("logp", "entropy", "rank", "top_ids", "top_logps", "entropy_top20")


def default_budget(device: torch.device) -> int:
    """Padded tokens per batch when none is given: big enough to keep the GEMMs efficient."""
    return 2048 if device.type == "cpu" else 16384


def batches_by_budget(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped so each batch's ``len(batch) * max(length)`` stays within ``budget``
    (one over-long example still forms its own batch). Longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def shared_prefix(examples: list[PreparedExample]) -> list[int]:
    """The longest token prefix all examples share, ending before the position that
    predicts their first target (so every needed hidden state is computed per batch)."""
    if not examples:
        return []
    first = examples[0].tokens.input_ids
    n = min(ex.tokens.target_mask.index(True) for ex in examples) - 1
    for ex in examples[1:]:
        ids = ex.tokens.input_ids
        n = min(n, len(ids))
        for i in range(n):
            if ids[i] != first[i]:
                n = i
                break
    return first[:max(n, 0)]


def vocab_pieces(tokenizer, size: int) -> list[str]:
    """The text of each token id on its own (byte-level pieces of a split character
    decode to U+FFFD), padded with ``""`` to ``size``."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))],
                                    skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)
    return pieces + [""] * (size - len(pieces))


def batch_tensors(batch: list[PreparedExample], pad_id: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``ids (B, T)``, ``real (B, T)`` and ``target (B, T)`` bool masks."""
    T = max(ex.tokens.n_tokens for ex in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    real = torch.zeros((len(batch), T), dtype=torch.bool)
    target = torch.zeros((len(batch), T), dtype=torch.bool)
    for b, ex in enumerate(batch):
        n = ex.tokens.n_tokens
        ids[b, :n] = torch.tensor(ex.tokens.input_ids)
        real[b, :n] = True
        target[b, :n] = torch.tensor(ex.tokens.target_mask)
    return ids, real, target


def target_rank(logits: torch.Tensor, tgt: torch.Tensor, top_vals: torch.Tensor) -> torch.Tensor:
    """1 + the number of logits strictly above the target's (1 = argmax; ties share).

    Args:
        logits: ``(n, V)``.
        tgt: ``(n,)`` the target's logit in each row.
        top_vals: ``(n, k)`` each row's k largest logits, descending.

    Returns:
        ``(n,)`` int32. A target at or above the k-th largest logit is ranked from
        ``top_vals`` alone (every larger logit is among them); only the other rows
        are compared with the whole vocabulary.
    """
    rank = (top_vals > tgt[:, None]).sum(-1, dtype=torch.int32) + 1
    outside = (tgt < top_vals[:, -1]).nonzero().squeeze(1)
    if outside.numel():
        rows = logits.index_select(0, outside)
        rank[outside] = (rows > tgt[outside, None]).sum(-1, dtype=torch.int32) + 1
    return rank


def _softcapped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _normalized(logits: torch.Tensor, top: torch.Tensor, top_idx: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z, probs, log_sum)`` of ``logits (n, V)`` (overwritten) given each row's largest
    logit ``top (n,)`` at ``top_idx (n, 1)``: ``z = logits - top`` (<= 0), its softmax and
    ``log sum exp(z)``. One code path for the model's and a reference's log-probs, so a
    model scoring as its own reference gives identical numbers."""
    z = logits.sub_(top[:, None])                                         # (n, V), <= 0
    probs = torch.softmax(z, dim=-1)                                      # (n, V)
    # log sum exp(z) from the top token's probability: p_max >= 1/V never
    # underflows, and it saves a pass over the vocabulary.
    log_sum = -probs.gather(1, top_idx).squeeze(1).log()                  # (n,)
    return z, probs, log_sum


@torch.inference_mode()
def target_stats(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module, *,
                 top_k: int, chunk: int, softcap: float | None = None) -> dict[str, torch.Tensor]:
    """Log-prob, entropy, rank, top-k and top-20 entropy of target tokens from the
    hidden states that predict them.

    Args:
        hidden: ``(N, H)`` final hidden states at the positions before each target.
        targets: ``(N,)`` target token ids.
        lm_head: the output projection, ``H -> V``.
        chunk: rows projected at a time; peak extra memory is about ``3 * chunk * V`` floats.

    Returns:
        ``logp (N,)``, ``entropy (N,)`` (nats), ``rank (N,)`` (1 = argmax),
        ``top_ids (N, k)``, ``top_logps (N, k)``, ``entropy_top20 (N,)`` (nats, the
        renormalized top-20 as :func:`infosft.schemes.eaft.top_entropy`); all float32 /
        int64 on CPU.
    """
    out: dict[str, list[torch.Tensor]] = {k: [] for k in STATS}
    # One top-k pass serves both the stored top-k and the top-20 entropy (a larger k
    # also ranks more targets without a pass over the vocabulary).
    for s in range(0, hidden.shape[0], chunk):
        logits = _softcapped(lm_head(hidden[s:s + chunk]).float(), softcap)  # (n, V)
        k_all = max(top_k, min(ENTROPY_TOP, logits.shape[-1]))
        top_vals, top_ids = logits.topk(k_all, dim=-1)                    # (n, k_all)
        tgt = logits.gather(1, targets[s:s + chunk, None]).squeeze(1)     # (n,)
        rank = target_rank(logits, tgt, top_vals)                         # (n,)
        logq = torch.log_softmax(top_vals[:, :ENTROPY_TOP], dim=-1)       # (n, 20)
        out["entropy_top20"].append((-(logq.exp() * logq).sum(-1)).cpu())
        top = top_vals[:, 0]
        z, probs, log_sum = _normalized(logits, top, top_ids[:, :1])
        # Entropy = log_sum - E[z]. On the shifted logits the two terms do not cancel,
        # so a fast dot product is as exact as an elementwise sum (on raw logits it
        # loses ~4e-3 nats).
        mean_z = torch.bmm(probs[:, None, :], z[:, :, None]).view(-1)     # (n,)
        out["entropy"].append((log_sum - mean_z).cpu())
        out["logp"].append((tgt - top - log_sum).cpu())
        out["rank"].append(rank.cpu())
        out["top_ids"].append(top_ids[:, :top_k].cpu())
        out["top_logps"].append((top_vals[:, :top_k] - (top + log_sum)[:, None]).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@torch.inference_mode()
def target_logp(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module, *,
                chunk: int, softcap: float | None = None) -> torch.Tensor:
    """``(N,)`` float32 log-probs of the targets alone (a reference model's ``logp_ref``),
    computed as :func:`target_stats`'s ``logp``; arguments as there."""
    out = []
    for s in range(0, hidden.shape[0], chunk):
        logits = _softcapped(lm_head(hidden[s:s + chunk]).float(), softcap)  # (n, V)
        tgt = logits.gather(1, targets[s:s + chunk, None]).squeeze(1)     # (n,)
        top, top_idx = logits.max(dim=-1)
        _, _, log_sum = _normalized(logits, top, top_idx[:, None])
        out.append((tgt - top - log_sum).cpu())
    return torch.cat(out) if out else torch.zeros(0)


class Scorer:
    """Runs a loaded model over prepared examples: per-token statistics as arrays.

    ``prefix``: token ids every example starts with (:func:`shared_prefix`); their
    key/value cache is computed once here and reused by every batch.
    ``token_budget``: padded tokens per batch (None: 2048 on CPU, 16384 on a GPU).
    ``reference``: a Scorer of a second model with the same vocabulary (and the same
    ``prefix``); each batch it runs on the same tokens and gives their ``logp_ref``.
    """

    def __init__(self, model, tokenizer, *, top_k: int = 5, head_chunk: int = 256,
                 token_budget: int | None = None, prefix: list[int] | None = None,
                 reference: Scorer | None = None):
        self.model, self.top_k, self.head_chunk = model, top_k, head_chunk
        self.reference = reference
        self.device = next(model.parameters()).device
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.budget = token_budget or default_budget(self.device)
        self.prefix_len, self.prefix_cache = 0, None
        # transformers >= 5.2x calls the KV-cache argument and output field ``cache``
        # (``past_key_values`` before; the old name now warns)
        self._cache_arg = ("cache" if "cache" in inspect.signature(self.decoder.forward).parameters
                           else "past_key_values")
        if prefix:
            # inference mode: the cache must not hold an autograd graph (and through it
            # the dense weights that packed_linears frees)
            with torch.inference_mode():
                out = self.decoder(input_ids=torch.tensor([prefix], device=self.device),
                                   use_cache=True)
            self.prefix_len = len(prefix)
            self.prefix_cache = [(layer.keys, layer.values) for layer in out[self._cache_arg].layers]

    def body(self, ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(B, T - prefix_len, H)`` for right-padded ``ids (B, T)``.

        No attention mask: with right padding, causal attention already keeps real
        tokens from seeing pads.
        """
        suffix = ids[:, self.prefix_len:].to(self.device)
        if self.prefix_cache is None:
            return self.decoder(input_ids=suffix, use_cache=False).last_hidden_state
        B = ids.shape[0]
        cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                             for k, v in self.prefix_cache],
                             config=self.model.config)
        return self.decoder(input_ids=suffix, use_cache=True,
                            **{self._cache_arg: cache}).last_hidden_state

    def target_hidden(self, ids: torch.Tensor, b_idx: torch.Tensor,
                      p_idx: torch.Tensor) -> torch.Tensor:
        """``(N, H)`` hidden states that predict the tokens at ``(b_idx, p_idx)``."""
        hidden = self.body(ids)                                # (B, T - prefix, H)
        h_idx = (p_idx - 1 - self.prefix_len).to(self.device)
        return hidden[b_idx.to(self.device), h_idx]

    def target_logp(self, ids: torch.Tensor, b_idx: torch.Tensor,
                    p_idx: torch.Tensor) -> torch.Tensor:
        """``(N,)`` float32 log-probs (CPU) of the tokens at ``(b_idx, p_idx)`` of ``ids``."""
        return target_logp(self.target_hidden(ids, b_idx, p_idx),
                           ids[b_idx, p_idx].to(self.device), self.lm_head,
                           chunk=self.head_chunk, softcap=self.softcap)

    @torch.inference_mode()
    def score_batch(self, batch: list[PreparedExample]) -> dict[str, np.ndarray]:
        """One row per real token of the batch, example by example, position by position.

        Returns:
            ``example_id``, ``position``, ``token_id`` (int32, ``(M,)``), ``is_target``
            (bool), ``logp``, ``entropy``, ``entropy_top20`` (float32, NaN off target),
            ``rank`` (int32, 0 off target), ``top_ids`` (int32 ``(M, k)``), ``top_logps``
            (float32 ``(M, k)``; both 0 off target); with a reference, ``logp_ref``
            (float32, NaN off target).
        """
        ids, real, target = batch_tensors(batch, self.pad_id)
        b_idx, p_idx = target.nonzero(as_tuple=True)
        stats = target_stats(self.target_hidden(ids, b_idx, p_idx),
                             ids[b_idx, p_idx].to(self.device), self.lm_head,
                             top_k=self.top_k, chunk=self.head_chunk, softcap=self.softcap)
        b_all, p_all = real.nonzero(as_tuple=True)       # row-major: example, then position
        M, k = len(b_all), self.top_k
        is_target = target[b_all, p_all].numpy()
        # Targets come in the same row-major order, so they fill the is_target slots in order.
        if self.reference is not None:
            stats["logp_ref"] = self.reference.target_logp(ids, b_idx, p_idx)
        out = {"logp": np.full(M, np.nan, dtype=np.float32),
               "entropy": np.full(M, np.nan, dtype=np.float32),
               "rank": np.zeros(M, dtype=np.int32),
               "top_ids": np.zeros((M, k), dtype=np.int32),
               "top_logps": np.zeros((M, k), dtype=np.float32),
               "entropy_top20": np.full(M, np.nan, dtype=np.float32)}
        if "logp_ref" in stats:
            out["logp_ref"] = np.full(M, np.nan, dtype=np.float32)
        for name in out:
            out[name][is_target] = stats[name].numpy()
        example_ids = np.array([ex.example_id for ex in batch], dtype=np.int32)
        return {"example_id": example_ids[b_all.numpy()],
                "position": p_all.numpy().astype(np.int32),
                "token_id": ids[b_all, p_all].numpy().astype(np.int32),
                "is_target": is_target, **out}

    def score(self, examples: list[PreparedExample]):
        """``(batch, arrays)`` for each batch of ``examples`` by the token budget
        (longest first), ``arrays`` as :meth:`score_batch`. Call it inside
        ``packed_linears(model, scorer.budget)`` for speed on a CPU."""
        for batch_idx in batches_by_budget([ex.tokens.n_tokens for ex in examples], self.budget):
            batch = [examples[j] for j in batch_idx]
            arrays = self.score_batch(batch)
            release_freed_memory()  # else fragmentation grows RSS with every new batch shape
            yield batch, arrays


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


@torch.inference_mode()
def kl_batch(base: Scorer, tuned: Scorer, batch: list[PreparedExample]) -> dict[str, np.ndarray]:
    """``example_id``, ``position`` (int32) and ``kl`` (float32) for every target token
    of a batch, row-major (example, then position)."""
    ids, _, target = batch_tensors(batch, base.pad_id)
    b_idx, p_idx = target.nonzero(as_tuple=True)
    h_base = base.target_hidden(ids, b_idx, p_idx)
    h_tuned = tuned.target_hidden(ids, b_idx, p_idx).to(h_base.device)
    kl = kl_from_hidden(h_base, h_tuned, base.lm_head, tuned.lm_head, chunk=base.head_chunk,
                        softcap_base=base.softcap, softcap_tuned=tuned.softcap)
    example_ids = np.array([ex.example_id for ex in batch], dtype=np.int32)[b_idx.numpy()]
    return {"example_id": example_ids, "position": p_idx.numpy().astype(np.int32),
            "kl": kl.numpy().astype(np.float32)}


def joint_kl(base_model, tuned_model, tokenizer, examples: list[PreparedExample], *,
             token_budget: int | None = None, head_chunk: int = 256,
             on_batch: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Per-token KL(base || tuned) over the target tokens of ``examples``.

    Both models must share the tokenizer the examples were prepared with. The shared
    token prefix runs once per model, as in scoring. ``on_batch(done_tokens,
    total_tokens)`` is called after every batch (for progress). On CPU the models'
    linear layers run on packed weights while this runs (``infosft.packed_linear``):
    do not use the models from another thread meanwhile.

    Returns:
        ``example_id`` (int32), ``position`` (int32), ``kl`` (float32), in batch order.
    """
    empty = {"example_id": np.zeros(0, np.int32), "position": np.zeros(0, np.int32),
             "kl": np.zeros(0, np.float32)}
    if not examples:
        return empty
    prefix = shared_prefix(examples)
    base = Scorer(base_model, tokenizer, token_budget=token_budget, head_chunk=head_chunk,
                  prefix=prefix)
    tuned = Scorer(tuned_model, tokenizer, token_budget=token_budget, head_chunk=head_chunk,
                   prefix=prefix)
    total = sum(ex.tokens.n_tokens for ex in examples)
    done, parts = 0, []
    with packed_linears(base_model, base.budget), packed_linears(tuned_model, tuned.budget):
        for batch_idx in batches_by_budget([ex.tokens.n_tokens for ex in examples], base.budget):
            batch = [examples[j] for j in batch_idx]
            parts.append(kl_batch(base, tuned, batch))
            release_freed_memory()
            done += sum(ex.tokens.n_tokens for ex in batch)
            if on_batch:
                on_batch(done, total)
    return {k: np.concatenate([p[k] for p in parts]) for k in empty}
