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

Schemes that read more than each token's log-prob (:func:`infosft.weights.needed_fields`)
get their fields online too, from the same step:

* ``entropy_top20`` (EAFT): the entropy of the trained model's top-20 next-token
  probabilities at its current logits, computed without gradient inside the chunked
  log-softmax below, chunk by chunk (:func:`target_logprobs` with ``entropy=True``), so
  it costs a top-k per row and no copy of the logits; only for schemes that need it.
* ``logp_ref`` (excess, Rho-1): a reference model's target log-probs, which the trainers
  compute with one extra no-grad forward of the reference (``reference_model=``) and
  pass to :meth:`WeightedLoss.loss_of_logprobs` as ``fields``.
* ``example``: which example each token belongs to (a batch row, or a document of a
  padding-free row), for ``excess`` with ``per=example``.

A scheme whose weights are a selection over a set (``per_token`` False: excess) is
weighed over the supervised tokens of the micro-batch only, so prompt and padding
positions never take part in its ranking.

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
from infosft.schemes import get as get_scheme
from infosft.schemes.eaft import top_entropy
from infosft.weights import BAND_NAMES, Q_BANDS, needed_fields, resolve_knobs, token_weights

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
    """``logp[i] = log_softmax(logits[i])[targets[i]]`` in row chunks, and optionally
    ``entropy[i]``, the entropy of the top-20 of ``logits[i]`` (EAFT's H_top20), from the
    same fp32 chunk, without gradient.

    Forward saves the logits (a reference, no copy) and the ``(N,)`` logsumexp; backward
    rebuilds the softmax chunk by chunk: ``d logp_i / d logits_i = onehot(y_i) - p_i``.
    Rows whose target is ignored get logp 0 (entropy 0) and gradient 0.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk: int,
                entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        valid = targets != IGNORE_INDEX
        safe = targets.clamp(min=0)
        logp = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
        lse = torch.zeros_like(logp)
        ent = torch.zeros_like(logp) if entropy else logp.new_zeros(0)
        busy = _busy_chunks(valid, chunk)
        for s in range(0, logits.shape[0], chunk):
            e = s + chunk
            if not busy[s // chunk]:  # padding / prompt-only rows: nothing to compute
                continue
            x = logits[s:e].float()
            lse[s:e] = torch.logsumexp(x, dim=-1)
            logp[s:e] = x.gather(1, safe[s:e, None]).squeeze(1) - lse[s:e]
            if entropy:  # the chunk already in fp32: a top-k per row, no other copy
                ent[s:e] = top_entropy(x)
        logp = logp.masked_fill(~valid, 0.0)
        if entropy:
            ent = ent.masked_fill(~valid, 0.0)
        ctx.mark_non_differentiable(ent)
        ctx.save_for_backward(logits, safe, valid, lse)
        ctx.chunk, ctx.busy = chunk, busy
        return logp, ent

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_entropy: torch.Tensor | None = None):
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
        return out, None, None, None


def target_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                    chunk_elements: int = CHUNK_ELEMENTS, *, entropy: bool = False):
    """Log-prob of each next token, differentiable, without a full log-softmax copy.

    Args:
        logits: ``(B, T, V)`` any float dtype (computed in fp32 chunk by chunk).
        labels: ``(B, T)`` unshifted token ids, ``-100`` = not supervised.
        entropy: also return each target's top-20 entropy (EAFT's ``entropy_top20``).

    Returns:
        ``logp`` ``(B, T)`` float32, where ``logp[b, t] = log p(labels[b, t + 1] | ..t)``
        and 0 where that label is ignored (and at the last position);
        ``mask`` ``(B, T)`` bool, True where ``logp`` is a supervised target; with
        ``entropy``, a third ``(B, T)`` float32, detached: the entropy (nats) of the
        renormalized top-20 of ``logits[b, t]``, 0 where not supervised.
    """
    targets = shift_left(labels, IGNORE_INDEX).to(logits.device)
    vocab = logits.shape[-1]
    out = row_logprobs(logits.reshape(-1, vocab), targets.reshape(-1), chunk_elements,
                       entropy=entropy)
    if entropy:
        logp, ent = out
        return logp.view(targets.shape), targets != IGNORE_INDEX, ent.view(targets.shape)
    return out.view(targets.shape), targets != IGNORE_INDEX


def row_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                 chunk_elements: int = CHUNK_ELEMENTS, *, entropy: bool = False):
    """``log_softmax(logits[i])[targets[i]]`` ``(N,)`` float32 of ``logits`` ``(N, V)`` and
    ``targets`` ``(N,)`` (already aligned; ``-100`` rows give 0), differentiable, in row
    chunks without a full log-softmax copy. With ``entropy``, ``(logp, entropy_top20)``:
    the second ``(N,)`` detached, from the same chunks (0 on ``-100`` rows)."""
    chunk = max(1, chunk_elements // logits.shape[-1])
    logp, ent = _TargetLogProb.apply(logits, targets, chunk, entropy)
    return (logp, ent) if entropy else logp


def example_ids(shape: torch.Size | tuple[int, ...], position_ids: torch.Tensor | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``(B, T)`` int64: which example each position belongs to, numbered from 0.

    Without ``position_ids``, an example is a batch row. With them (``(B, T)``), an example
    also starts wherever the positions restart at 0: the documents of a padding-free or
    packed row are examples of their own (a pad position is then one of its own, but
    holds no target)."""
    b, t = shape
    if position_ids is None or tuple(position_ids.shape) != (b, t):
        return torch.arange(b, device=device)[:, None].expand(b, t)
    starts = position_ids.to(device) == 0
    starts[:, 0] = True
    return starts.reshape(-1).long().cumsum(0).reshape(b, t) - 1


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
      required in ``static`` mode, ignored ``online``;
    * ``fields``: the per-token fields the scheme needs beyond logp, ``(B, T)`` each in
      :func:`target_logprobs`' layout: ``entropy_top20`` is computed here from the logits
      when missing; ``logp_ref`` (excess) must be given (the trainers' ``reference_model``).

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
        #: the fields beyond logp that online weights need (static mode: none)
        self.needs = needed_fields(scheme) if mode == "online" else ()
        self._per_token = get_scheme(scheme).per_token
        self._calls = 0
        self._stats: list[torch.Tensor] = []

    @property
    def needs_entropy(self) -> bool:
        """Whether the online weights read ``entropy_top20`` of the trained model (EAFT)."""
        return "entropy_top20" in self.needs

    @property
    def needs_reference(self) -> bool:
        """Whether the online weights read a reference model's ``logp_ref`` (excess)."""
        return "logp_ref" in self.needs

    def weights_for(self, logp: torch.Tensor, fields: dict[str, torch.Tensor] | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """Online weights ``(*)`` from target log-probs ``(*)`` (and the scheme's other
        ``fields``, each ``(*)``), detached.

        ``mask`` ``(*)`` bool, the supervised positions: a scheme that selects over a set
        (excess) is weighed over those alone, 0 elsewhere; per-token schemes see every
        position, as before (ProFit-random's draw covers the whole batch)."""
        knobs = dict(self.knobs)
        knobs.pop("P", None)  # resolved knobs carry both C and P; C is the one used
        if knobs.get("direction") == "random":
            # A fresh, reproducible drop pattern at every call (a fixed seed would drop
            # the same positions of every equally shaped batch).
            knobs["seed"] = knobs["seed"] + self._calls
        missing = [n for n in self.needs if n not in (fields or {})]
        if missing:
            how = ("pass reference_model= to WeightedTrainer / WeightedSFTTrainer "
                   "(`infosft train --reference MODEL`)" if missing[0] == "logp_ref"
                   else "compute it with target_logprobs(..., entropy=True)")
            raise ValueError(f"scheme {self.scheme!r} needs each token's {missing[0]} "
                             f"online: {how}")
        fields = {k: v.detach() for k, v in (fields or {}).items()}
        if self._per_token or mask is None:
            return token_weights(logp.detach(), self.scheme, fields=fields, **knobs)
        w = torch.zeros(logp.shape, dtype=torch.float32, device=logp.device)
        picked = {k: v.to(logp.device)[mask] for k, v in fields.items()}
        w[mask] = token_weights(logp.detach()[mask], self.scheme, fields=picked,
                                **knobs).to(w.device)
        return w

    def __call__(self, outputs: Any, labels: torch.Tensor,
                 num_items_in_batch: torch.Tensor | int | None = None,
                 weights: torch.Tensor | None = None,
                 fields: dict[str, torch.Tensor] | None = None, **_: Any) -> torch.Tensor:
        fields = dict(fields or {})
        if self.needs_entropy and "entropy_top20" not in fields:
            logp, mask, fields["entropy_top20"] = target_logprobs(
                _logits(outputs), labels, self.chunk_elements, entropy=True)
        else:
            logp, mask = target_logprobs(_logits(outputs), labels, self.chunk_elements)
        return self.loss_of_logprobs(logp, mask, num_items_in_batch, weights, fields)

    def loss_of_logprobs(self, logp: torch.Tensor, mask: torch.Tensor,
                         num_items_in_batch: torch.Tensor | int | None = None,
                         weights: torch.Tensor | None = None,
                         fields: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The weighted loss of target log-probs already computed (e.g. by a fused LM head).

        Args:
            logp: ``(B, T)`` float32 with grad, in :func:`target_logprobs`' layout:
                ``logp[b, t]`` is the log-prob of token ``t + 1``; 0 where not supervised.
            mask: ``(B, T)`` bool, True where ``logp`` is a supervised target.
            num_items_in_batch: N (see :func:`weighted_nll`).
            weights: ``(B, T)`` unshifted static weights, aligned with the labels.
            fields: online only, the scheme's other per-token fields (``entropy_top20``,
                ``logp_ref``), ``(B, T)`` in ``logp``'s layout, and optionally ``example``
                ``(B, T)`` int (default: the batch row, see :func:`example_ids`).

        Returns:
            Scalar float32 loss; counts one call (ProFit-random's seed) and the weight stats.
        """
        if self.mode == "static":
            if weights is None:
                raise ValueError("static mode needs per-token 'weights' in the batch "
                                 "(train on a dataset exported by `infosft export`)")
            w = shift_left(weights.to(logp.device, torch.float32), 0.0)
        else:
            fields = dict(fields or {})
            if "example" not in fields and logp.dim() == 2:
                fields["example"] = example_ids(logp.shape, device=logp.device)
            w = self.weights_for(logp, fields, mask)
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
        scheme: ``sft``, ``dft``, ``infosft``, ``profit``, ``eaft`` (its entropy is
            computed from the logits the Trainer passes), a user's ``module:function``,
            or ``excess`` (only where the caller passes ``fields={"logp_ref": ...}``; the
            Trainer's ``compute_loss_func`` cannot: use :mod:`infosft.trainers`).
        mode: ``online`` (weights from the trained model's own q, every step) or
            ``static`` (weights from the batch's ``weights`` field).
        **knobs: the scheme's knobs (``C`` or ``P``; ``threshold``, ``direction``,
            ``seed``; ``alpha``; ``keep``, ``per``; a user scheme's), validated now so a
            bad knob fails before training starts.
    """
    return WeightedLoss(scheme, mode, **knobs)
