"""The weighted SFT loss: ``sum_t w_t * (-logp_t) / N`` with detached weights.

``w_t`` comes from :mod:`infosft.weights` (the one copy of the formulas), either
``online`` from the model being trained (its own q at this step, the papers' method)
or ``static`` from per-token weights carried in the batch (an exported dataset).
``N`` is the number of supervised tokens of the whole optimizer step
(``num_items_in_batch``, as the Hugging Face Trainer passes it), zero-weight tokens
included: there is no renormalization by ``sum(w)``, as in the reference code.

Train with the classes of :mod:`infosft.trainers` (``WeightedSFTTrainer``,
``WeightedTrainer``), which override ``compute_loss``. For older stacks, it also works
wherever the Trainer takes a ``compute_loss_func`` (TRL 1.16 deprecates that, and runs
an extra forward pass for it)::

    from infosft.loss import make_loss_func
    trainer = Trainer(..., compute_loss_func=make_loss_func("infosft", P=0.93))

Memory: the log-prob of each target is ``logit[y] - logsumexp(logits)``, computed
in row chunks by a custom autograd function that keeps only the logits the model
already produced plus one ``(N,)`` vector. Plain cross-entropy keeps a full
``log_softmax`` copy of the logits for backward (and an fp32 upcast of bf16
logits); this loss keeps neither.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from infosft.data import IGNORE_INDEX  # noqa: F401  (re-exported: the loss's ignore label)
from infosft.weights import BAND_NAMES, Q_BANDS, resolve_knobs, token_weights

#: bins of the q histogram logged at each logging step (0.05 wide over [0, 1])
Q_BINS = 20
#: what each training log line adds about its supervised tokens (see WeightedLoss.pop_stats)
STEP_PICTURE = ("q_hist", *(f"weight_share_{b}" for b in BAND_NAMES))

MODES = ("online", "static")
# Elements of one fp32 chunk of logits (64 MiB): bounds the temporaries of the
# chunked log-softmax whatever the vocabulary size.
CHUNK_ELEMENTS = 1 << 24


def shift_left(x: torch.Tensor, fill: float | int) -> torch.Tensor:
    """Align per-token values with the logits that predict them.

    Args:
        x: ``(B, T)`` values of token ``t`` (labels or weights).

    Returns:
        ``(B, T)``: position ``t`` holds ``x[:, t + 1]``; the last position is ``fill``.
        Padding ``x`` rather than slicing the logits keeps the logits contiguous,
        so flattening them is a view, not a copy.
    """
    return F.pad(x[..., 1:], (0, 1), value=fill)


def _busy_chunks(valid: torch.Tensor, chunk: int) -> list[bool]:
    """Which row chunks of ``valid`` ``(N,)`` hold a target: one host sync, not one per chunk."""
    pad = -valid.shape[0] % chunk
    return F.pad(valid, (0, pad)).view(-1, chunk).any(1).tolist()


class _TargetLogProb(torch.autograd.Function):
    """``logp[i] = log_softmax(logits[i])[targets[i]]`` in row chunks.

    Forward saves the logits (a reference, no copy) and the ``(N,)`` logsumexp; backward
    rebuilds the softmax chunk by chunk: ``d logp_i / d logits_i = onehot(y_i) - p_i``.
    Rows whose target is ignored get logp 0 and gradient 0.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        safe = targets.clamp(min=0)
        logp = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
        lse = torch.zeros_like(logp)
        busy = _busy_chunks(valid, chunk)
        for s in range(0, logits.shape[0], chunk):
            e = s + chunk
            if not busy[s // chunk]:  # padding / prompt-only rows: nothing to compute
                continue
            x = logits[s:e].float()
            lse[s:e] = torch.logsumexp(x, dim=-1)
            logp[s:e] = x.gather(1, safe[s:e, None]).squeeze(1) - lse[s:e]
        logp = logp.masked_fill(~valid, 0.0)
        ctx.save_for_backward(logits, safe, valid, lse)
        ctx.chunk, ctx.busy = chunk, busy
        return logp

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, safe, valid, lse = ctx.saved_tensors
        g = grad.float() * valid
        out = torch.empty_like(logits)
        same_dtype = logits.dtype == torch.float32
        for s in range(0, logits.shape[0], ctx.chunk):
            e = s + ctx.chunk
            if not ctx.busy[s // ctx.chunk]:
                out[s:e].zero_()
                continue
            # In place in the output when it is fp32: no chunk-sized temporary.
            buf = out[s:e] if same_dtype else torch.empty_like(logits[s:e], dtype=torch.float32)
            torch.sub(logits[s:e].float(), lse[s:e, None], out=buf)
            buf.exp_().mul_(-g[s:e, None])
            buf.scatter_add_(1, safe[s:e, None], g[s:e, None])
            if not same_dtype:
                out[s:e] = buf
        return out, None, None


def target_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                    chunk_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each next token, differentiable, without a full log-softmax copy.

    Args:
        logits: ``(B, T, V)`` any float dtype (computed in fp32 chunk by chunk).
        labels: ``(B, T)`` unshifted token ids, ``-100`` = not supervised.

    Returns:
        ``logp`` ``(B, T)`` float32, where ``logp[b, t] = log p(labels[b, t + 1] | ..t)``
        and 0 where that label is ignored (and at the last position);
        ``mask`` ``(B, T)`` bool, True where ``logp`` is a supervised target.
    """
    targets = shift_left(labels, IGNORE_INDEX).to(logits.device)
    vocab = logits.shape[-1]
    logp = row_logprobs(logits.reshape(-1, vocab), targets.reshape(-1), chunk_elements)
    return logp.view(targets.shape), targets != IGNORE_INDEX


def row_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                 chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """``log_softmax(logits[i])[targets[i]]`` ``(N,)`` float32 of ``logits`` ``(N, V)`` and
    ``targets`` ``(N,)`` (already aligned; ``-100`` rows give 0), differentiable, in row
    chunks without a full log-softmax copy."""
    chunk = max(1, chunk_elements // logits.shape[-1])
    return _TargetLogProb.apply(logits, targets, chunk)


def weighted_nll(logp: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor,
                 num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """``sum(w * -logp) / N`` over supervised positions.

    Args:
        logp: ``(*)`` float32 target log-probs (with grad).
        weights: ``(*)`` float32 weights, detached.
        mask: ``(*)`` bool, supervised positions.
        num_items: N, the supervised tokens of the whole optimizer step; None = ``mask.sum()``.

    Returns:
        Scalar float32 loss.
    """
    total = -(weights.detach() * logp).masked_fill(~mask, 0.0).sum()
    if num_items is None:
        num_items = mask.sum()
    if torch.is_tensor(num_items):
        num_items = num_items.to(total.device)
    # max(., 1): a batch with no supervised token gives loss 0, not NaN.
    return total / (num_items.clamp(min=1) if torch.is_tensor(num_items) else max(num_items, 1))


def _logits(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        return outputs["logits"]
    return outputs[0]


class WeightedLoss:
    """A ``compute_loss_func`` for ``transformers.Trainer`` / TRL's ``SFTTrainer``.

    Call with ``(outputs, labels, num_items_in_batch=None, weights=None)``:

    * ``outputs``: the model output (``.logits`` ``(B, T, V)``) or the logits themselves;
    * ``labels``: ``(B, T)`` unshifted, ``-100`` = ignore, as transformers passes them;
    * ``weights``: ``(B, T)`` float per token aligned with ``labels`` (0 on non-targets),
      required in ``static`` mode, ignored ``online``.

    It also accumulates, for logging, over the supervised tokens since the last
    :meth:`pop_stats`: the mean weight, the share of zero-weight tokens, the histogram of
    q (:data:`Q_BINS` bins) and the weight per q band (``infosft.weights.Q_BANDS``), so
    a run shows how the picture of the step-0 analysis drifts as the model learns.
    """

    def __init__(self, scheme: str = "infosft", mode: str = "online",
                 chunk_elements: int = CHUNK_ELEMENTS, **knobs: Any):
        if mode not in MODES:
            raise ValueError(f"unknown loss mode {mode!r}: choose one of {', '.join(MODES)}")
        self.scheme, self.mode, self.chunk_elements = scheme, mode, chunk_elements
        self.knobs = resolve_knobs(scheme, **knobs)
        self._calls = 0
        self._stats: list[torch.Tensor] = []

    def weights_for(self, logp: torch.Tensor) -> torch.Tensor:
        """Online weights ``(*)`` from target log-probs ``(*)``, detached."""
        knobs = dict(self.knobs)
        knobs.pop("P", None)  # resolved knobs carry both C and P; C is the one used
        if knobs.get("direction") == "random":
            # A fresh, reproducible drop pattern at every call (a fixed seed would drop
            # the same positions of every equally shaped batch).
            knobs["seed"] = knobs["seed"] + self._calls
        return token_weights(logp.detach(), self.scheme, **knobs)

    def __call__(self, outputs: Any, labels: torch.Tensor,
                 num_items_in_batch: torch.Tensor | int | None = None,
                 weights: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        logp, mask = target_logprobs(_logits(outputs), labels, self.chunk_elements)
        return self.loss_of_logprobs(logp, mask, num_items_in_batch, weights)

    def loss_of_logprobs(self, logp: torch.Tensor, mask: torch.Tensor,
                         num_items_in_batch: torch.Tensor | int | None = None,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted loss of target log-probs already computed (e.g. by a fused LM head).

        Args:
            logp: ``(B, T)`` float32 with grad, in :func:`target_logprobs`' layout:
                ``logp[b, t]`` is the log-prob of token ``t + 1``; 0 where not supervised.
            mask: ``(B, T)`` bool, True where ``logp`` is a supervised target.
            num_items_in_batch: N (see :func:`weighted_nll`).
            weights: ``(B, T)`` unshifted static weights, aligned with the labels.

        Returns:
            Scalar float32 loss; counts one call (ProFit-random's seed) and the weight stats.
        """
        if self.mode == "static":
            if weights is None:
                raise ValueError("static mode needs per-token 'weights' in the batch "
                                 "(train on a dataset exported by `infosft export`)")
            w = shift_left(weights.to(logp.device, torch.float32), 0.0)
        else:
            w = self.weights_for(logp)
        w = w.masked_fill(~mask, 0.0)
        self._calls += 1
        with torch.no_grad():
            self._stats.append(_step_stats(logp, w, mask))
        return weighted_nll(logp, w, mask, num_items_in_batch)

    def skip_calls(self, n: int) -> None:
        """Start the call count at ``n``: a resumed run (``n`` = micro-batches already
        trained) draws the same ProFit-random patterns as an uninterrupted one."""
        self._calls = n

    def pop_stats(self) -> dict[str, Any]:
        """What the supervised tokens seen since the last call looked like:
        ``mean_weight``, ``zero_weight_share``, ``target_tokens``, ``q_hist`` (token
        counts in :data:`Q_BINS` equal bins of q over [0, 1]) and ``weight_share_low``,
        ``_medium``, ``_high`` (each band's share of the summed weight; None when every
        weight is 0). None / empty when no token was seen."""
        empty = {"mean_weight": None, "zero_weight_share": None, "target_tokens": 0,
                 "q_hist": None, **{f"weight_share_{b}": None for b in BAND_NAMES}}
        if not self._stats:
            return empty
        total = torch.stack(self._stats).sum(0).tolist()
        self._stats.clear()
        sum_w, zeros, n = total[:3]
        if n == 0:
            return empty
        hist, band_w = total[3:3 + Q_BINS], total[3 + Q_BINS:]
        return {"mean_weight": sum_w / n, "zero_weight_share": zeros / n,
                "target_tokens": int(n), "q_hist": [int(round(c)) for c in hist],
                **{f"weight_share_{b}": (x / sum_w if sum_w > 0 else None)
                   for b, x in zip(BAND_NAMES, band_w)}}


def _step_stats(logp: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(3 + Q_BINS + 3,)`` float: summed weight, zero-weight targets, targets, the q
    histogram and the weight per q band, of one call's supervised tokens."""
    q, wm = logp.detach()[mask].float().exp(), w[mask]
    hist = torch.histc(q, bins=Q_BINS, min=0.0, max=1.0)  # q = 1 falls in the last bin
    edges = torch.tensor(Q_BANDS, device=q.device, dtype=q.dtype)
    band = torch.bucketize(q, edges, right=True)  # low < 0.1 <= medium < 0.9 <= high
    band_w = torch.zeros(len(BAND_NAMES), device=q.device).index_add_(0, band, wm.float())
    head = torch.stack([w.sum(), ((w == 0) & mask).sum().float(), mask.sum().float()])
    return torch.cat([head.float(), hist, band_w])


def make_loss_func(scheme: str = "infosft", mode: str = "online", **knobs: Any) -> WeightedLoss:
    """The weighted loss for ``Trainer(compute_loss_func=...)``.

    Args:
        scheme: ``sft``, ``dft``, ``infosft`` or ``profit``.
        mode: ``online`` (weights from the trained model's own q, every step) or
            ``static`` (weights from the batch's ``weights`` field).
        **knobs: the scheme's knobs (``C`` or ``P``; ``threshold``, ``direction``,
            ``seed``), validated now so a bad knob fails before training starts.
    """
    return WeightedLoss(scheme, mode, **knobs)
