"""Weighted SFT as trainer classes, for TRL's ``SFTTrainer`` and the Hugging Face ``Trainer``.

The loss is ``sum_t w_t * (-logp_t) / N`` (see :mod:`infosft.loss`): ``w_t`` from
:mod:`infosft.weights`, detached, and ``N`` the supervised tokens of the whole optimizer
step, zero-weight ones included. The scheme and its knobs are keyword arguments beside
the parent's own: ``scheme`` (``sft``, ``dft``, ``infosft``, ``profit``, ``eaft``,
``excess``, or a user's ``module:function``), ``mode`` (``online`` or ``static``), ``C``
or ``P`` (InfoSFT), ``threshold``, ``direction``, ``seed`` (ProFit), ``alpha`` (EAFT),
``keep``, ``per`` (excess), a user scheme's own by name, or all of them as ``knobs={...}``.

Online, the schemes that read more than each token's log-prob get it from the same step:
EAFT's ``entropy_top20`` from the trained model's current logits (in the chunked
log-softmax, without gradient: no other pass, no copy of the logits), and excess's
``logp_ref`` from ``reference_model=``, a loaded model run once per micro-batch on the
same inputs under ``torch.no_grad`` (in eval mode, moved to the trained model's device
and dtype, never trained or saved)::

    ref = AutoModelForCausalLM.from_pretrained(base_path)
    trainer = WeightedSFTTrainer(model=model, args=args, train_dataset=dataset,
                                 processing_class=tokenizer, scheme="excess",
                                 reference_model=ref, keep=0.6)

Online weights, the papers' method (each token's weight from the trained model's own q,
recomputed at every step)::

    from trl import SFTConfig
    from infosft.trainers import WeightedSFTTrainer

    args = SFTConfig(output_dir="out", use_cpu=True, bf16=False)  # CPU
    # args = SFTConfig(output_dir="out", bf16=True)               # GPU (the default there)
    trainer = WeightedSFTTrainer(model=model, args=args, train_dataset=dataset,
                                 processing_class=tokenizer, scheme="infosft", P=0.93)
    trainer.train()

Static weights, frozen per token in a dataset written by ``infosft export``::

    import datasets

    data = datasets.load_dataset("parquet", data_files="weighted.parquet")["train"]
    args = SFTConfig(output_dir="out", max_length=1024, use_cpu=True, bf16=False)
    trainer = WeightedSFTTrainer(model=model, args=args, train_dataset=data,
                                 processing_class=tokenizer, mode="static")
    trainer.train()

TRL's truncation (``max_length``, ``truncation_mode``), padding and padding-free batches
(``padding_free=True, max_length=None``) keep ``weights`` aligned with ``labels`` token for
token; packing drops them, so static mode refuses it. On CPU, ``SFTConfig`` needs
``use_cpu=True, bf16=False`` (its ``bf16`` defaults to True, which a CPU refuses);
``gradient_checkpointing=False`` makes small models faster there.

Without TRL, :class:`WeightedTrainer` is a ``transformers.Trainer`` with the same keyword
arguments and ``TrainingArguments``; it pads with :class:`WeightedCollator` by default and
does no truncation of its own.

One forward pass of the trained model per micro-batch. Under TRL (1.16+) the forward is
TRL's fused LM head, ``model(**inputs, fused_lm_head=True)``, which returns the target
log-probs without building ``(B, T, V)`` logits; the online weights come from those
log-probs, detached. (TRL's head has no top-20 entropy, so EAFT takes infosft's target
head instead.) Elsewhere it is infosft's own target head (:mod:`infosft.target_head`): the backbone, then
the vocabulary projection and the chunked log-softmax of :mod:`infosft.loss` only at the
positions that predict a supervised token; models that scale their logits get the full
logits. ``infosft train`` adds padding-free batches, per-document attention and, on the
CPU, oneDNN-packed frozen weights and a cheaper dropout (see :mod:`infosft.train`).
Evaluation reports the plain mean token NLL, whatever the scheme, so runs compare.
Training logs carry ``mean_weight`` and ``zero_weight_share`` beside ``loss``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from infosft.data import IGNORE_INDEX
from infosft.errors import InfosftError
from infosft.loss import WeightedLoss, _logits, example_ids, target_logprobs, weighted_nll
from infosft.schemes import get as get_scheme
from infosft.target_head import add_target_head, causal_lm

__all__ = ["WeightedCollator", "WeightedSFTTrainer", "WeightedTrainer"]  # noqa: F822 (lazy)

TRL_MISSING = "WeightedSFTTrainer needs TRL: pip install 'infosft[trl]'"
WEIGHTS = "weights"


def pad_id_of(tokenizer: Any) -> int:
    """The pad id of a tokenizer (or processor): its pad token, else its EOS, else 0.
    Padded positions are masked out, so any id the embeddings hold will do."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return tid
    return 0


# ---------------------------------------------------------------- collator


def _pad(seqs: list[torch.Tensor], value: float, multiple: int | None) -> torch.Tensor:
    """``(len(seqs), T)`` right-padded with ``value``; T = longest, rounded up to ``multiple``."""
    n = max(len(s) for s in seqs)
    if multiple:
        n = -(-n // multiple) * multiple
    out = seqs[0].new_full((len(seqs), n), value)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


class WeightedCollator:
    """Pads examples into a batch, carrying per-token ``weights`` along with ``labels``.

    Each example is a dict with ``input_ids`` ``(T,)`` and optionally ``labels`` ``(T,)``
    (default: ``input_ids``), ``weights`` ``(T,)`` and, for packed rows, ``seq_lengths``
    (the lengths of the documents in the row); other keys are ignored.

    Padded (default), it returns ``input_ids`` ``(B, T)`` (pad id), ``labels`` ``(B, T)``
    (-100 on pads), ``attention_mask`` ``(B, T)``, ``weights`` ``(B, T)`` float32 (0 on
    pads) when the examples carry them, and ``position_ids`` ``(B, T)`` with
    ``return_position_ids``.

    Padding-free, it flattens the batch into one row ``(1, sum T)``: ``input_ids``,
    ``labels``, ``weights``, ``position_ids`` (restarting at 0 at each example), no
    attention mask, and the varlen keys ``cu_seq_lens_q``/``cu_seq_lens_k`` ``(n + 1,)``
    int32, ``max_length_q``/``max_length_k`` and ``seq_idx`` ``(1, sum T)`` int32. The
    first label of each example is -100, so no example predicts across the boundary.
    These are the keys and values of TRL's ``DataCollatorForLanguageModeling`` (1.16),
    plus ``weights``, so flash attention and SDPA take their varlen paths alike.
    """

    def __init__(self, pad_token_id: int, padding_free: bool = False,
                 pad_to_multiple_of: int | None = None, return_position_ids: bool = False):
        self.pad_token_id, self.padding_free = pad_token_id, padding_free
        self.pad_to_multiple_of, self.return_position_ids = pad_to_multiple_of, return_position_ids

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        with_weights = WEIGHTS in examples[0]
        rows = [self._tensors(i, e, with_weights) for i, e in enumerate(examples)]
        fill = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX, WEIGHTS: 0.0,
                "position_ids": 0, "attention_mask": 0}
        if self.padding_free:
            rows = [{k: torch.cat([r[k] for r in rows]) for k in rows[0]}]
        else:
            for r in rows:
                r["attention_mask"] = torch.ones_like(r["input_ids"])
        batch = {k: _pad([r[k] for r in rows], fill[k], self.pad_to_multiple_of) for k in rows[0]}
        if not self.padding_free:
            if not self.return_position_ids:
                del batch["position_ids"]
            return batch
        positions = batch["position_ids"]
        starts = positions == 0  # each example's first token, and each pad
        batch["labels"][starts] = IGNORE_INDEX
        if with_weights:
            batch[WEIGHTS][starts] = 0.0  # 0 wherever nothing is supervised, as in an export
        begin = starts[0].nonzero().flatten()
        cu = torch.cat([begin, torch.tensor([positions.size(1)])]).to(torch.int32)
        batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu
        batch["max_length_q"] = batch["max_length_k"] = int(cu.diff().max())
        batch["seq_idx"] = torch.repeat_interleave(
            torch.arange(len(cu) - 1, dtype=torch.int32), cu.diff())[None]
        return batch

    @staticmethod
    def _tensors(i: int, example: dict[str, Any], with_weights: bool) -> dict[str, torch.Tensor]:
        """One example's ``input_ids``, ``labels``, ``weights``, ``position_ids``, all ``(T,)``."""
        ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
        labels = example.get("labels", example["input_ids"])  # plain text: every token
        out = {"input_ids": ids, "labels": torch.as_tensor(labels, dtype=torch.long)}
        if with_weights:
            if WEIGHTS not in example:
                raise ValueError(f"example {i} of the batch has no 'weights' (example 0 has)")
            out[WEIGHTS] = torch.as_tensor(example[WEIGHTS], dtype=torch.float32)
        for key, value in out.items():
            if len(value) != len(ids):
                raise ValueError(f"example {i} of the batch: {len(value)} {key} for "
                                 f"{len(ids)} input_ids")
        lengths = example["seq_lengths"] if "seq_lengths" in example else [len(ids)]
        out["position_ids"] = torch.cat([torch.arange(int(n)) for n in lengths])
        return out


# ---------------------------------------------------------------- the loss, shared


class _ResumeDraws(TrainerCallback):
    """Restarts the loss's call count at the resumed step, so a resumed run draws the
    ProFit-random drop patterns an uninterrupted one would."""

    def __init__(self, loss: WeightedLoss):
        self.loss = loss

    def on_train_begin(self, args, state, control, **kwargs):
        self.loss.skip_calls(state.global_step * args.gradient_accumulation_steps)


class _WeightedLossMixin:
    """``compute_loss`` with the weighted loss, for a ``transformers.Trainer`` subclass."""

    # compute_loss already divides by the whole step's N (or, without N, by the number of
    # micro-batches): training_step must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, model: Any = None, args: Any = None, *, scheme: str = "infosft",
                 mode: str = "online", C: float | None = None, P: float | None = None,
                 threshold: Any = None, direction: str | None = None, seed: int | None = None,
                 knobs: dict[str, Any] | None = None, reference_model: Any = None,
                 **kwargs: Any):
        if kwargs.get("compute_loss_func") is not None:
            raise InfosftError(f"{type(self).__name__} computes the weighted loss itself; "
                               "leave out compute_loss_func")
        # Validated first: the parent's __init__ may spend minutes preparing the dataset.
        try:
            own = get_scheme(scheme).knob_names  # a module:function scheme loads here
        except ValueError as e:
            raise InfosftError(str(e)) from None
        extra = {k: kwargs.pop(k) for k in own if k in kwargs}  # alpha=..., keep=..., gamma=...
        self.weighted_loss = WeightedLoss(scheme, mode, **{
            **(knobs or {}), **extra, **{k: v for k, v in dict(
                C=C, P=P, threshold=threshold, direction=direction, seed=seed).items()
                if v is not None}})
        if self.weighted_loss.needs_reference and reference_model is None:
            raise InfosftError(f"scheme {scheme!r} compares each token's log-prob with a "
                               "reference model's: pass reference_model= (a loaded model)")
        super().__init__(model, args, **kwargs)
        self.add_callback(_ResumeDraws(self.weighted_loss))
        # One forward, and the vocabulary projection only where a target is predicted:
        # TRL's fused LM head where the parent has one, else infosft's target head. TRL's
        # head computes no top-20 entropy: EAFT takes infosft's head (or the full logits).
        self._fused = self._uses_fused_head() and not self.weighted_loss.needs_entropy
        self._target_head = not self._fused and add_target_head(
            self.model, self.weighted_loss.chunk_elements)
        # Only a scheme that reads logp_ref runs the reference (static mode: never).
        self.reference_model = reference_model if self.weighted_loss.needs_reference else None
        self._reference_head = False
        if self.reference_model is not None:
            self._prepare_reference()

    def _prepare_reference(self) -> None:
        """Freeze the reference, in eval mode, with the trained model's attention (a
        padding-free batch needs one that keeps its documents apart) and dtype."""
        from infosft.varlen_attention import NAME as VARLEN, use_varlen_attention

        ref = self.reference_model
        ref.eval()
        ref.requires_grad_(False)
        trained = getattr(getattr(causal_lm(self.model), "config", None),
                          "_attn_implementation", None)
        if trained == VARLEN:
            use_varlen_attention(ref)
        ref_impl = getattr(getattr(causal_lm(ref), "config", None), "_attn_implementation", None)
        if trained is not None and ref_impl is not None and ref_impl != trained:
            import logging

            logging.getLogger("infosft.trainers").warning(
                "the reference model's attention is %s, the trained model's %s: on "
                "padding-free batches both must keep the documents apart", ref_impl, trained)
        self._reference_dtype = getattr(causal_lm(self.model), "dtype", None)
        self._place_reference(self.args.device)
        self._reference_head = add_target_head(ref, self.weighted_loss.chunk_elements)

    def _place_reference(self, device: torch.device) -> None:
        ref = self.reference_model
        first = next(ref.parameters(), None)
        if first is not None and (first.device != torch.device(device) or (
                self._reference_dtype is not None and first.is_floating_point()
                and first.dtype != self._reference_dtype)):
            ref.to(device=device, dtype=self._reference_dtype)

    @torch.no_grad()
    def _reference_logprobs(self, inputs: dict[str, Any], labels: torch.Tensor) -> torch.Tensor:
        """``logp_ref`` ``(B, T)`` float32 in :func:`infosft.loss.target_logprobs`' layout:
        one forward of the reference on the micro-batch, without gradient."""
        ref = self.reference_model
        ids = inputs.get("input_ids")
        self._place_reference(ids.device if torch.is_tensor(ids) else labels.device)
        if self._reference_head:
            return ref(**inputs, target_labels=labels).log_probs.float()
        logp, _ = target_logprobs(_logits(ref(**inputs)), labels,
                                  self.weighted_loss.chunk_elements)
        return logp

    def _uses_fused_head(self) -> bool:
        return False

    def _set_signature_columns_if_needed(self) -> None:
        # remove_unused_columns keeps only the model's inputs; static weights ride beside them.
        super()._set_signature_columns_if_needed()
        if WEIGHTS not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHTS]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self._weighted_loss(model, inputs, return_outputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _weighted_loss(self, model, inputs, return_outputs, num_items_in_batch):
        """(loss, outputs) of one forward: the weighted loss in training, the mean token NLL
        in evaluation."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        weights = inputs.pop(WEIGHTS, None)
        inputs["use_cache"] = False
        loss_fn = self.weighted_loss
        fields: dict[str, torch.Tensor] = {}
        if model.training and self.reference_model is not None:
            fields["logp_ref"] = self._reference_logprobs(dict(inputs), labels)
        entropy = model.training and loss_fn.needs_entropy
        if return_outputs:  # the caller wants the logits (compute_metrics): that forward it is
            outputs = model(**inputs)
            logp, mask, *ent = target_logprobs(outputs.logits, labels, loss_fn.chunk_elements,
                                               entropy=entropy)
        else:
            logp, mask, outputs, *ent = self._target_logprobs(model, inputs, labels,
                                                              entropy=entropy)
        if not model.training:
            return weighted_nll(logp, mask.float(), mask), outputs
        if ent:
            fields["entropy_top20"] = ent[0]
        if loss_fn.mode == "online":
            # which example each token is: a row, or a document of a padding-free row
            fields["example"] = example_ids(logp.shape, inputs.get("position_ids"), logp.device)
        loss = loss_fn.loss_of_logprobs(logp, mask, num_items_in_batch, weights, fields)
        if num_items_in_batch is None:  # normalized per micro-batch: average the step's here
            steps = getattr(self, "current_gradient_accumulation_steps",
                            self.args.gradient_accumulation_steps)
            return loss / steps, outputs
        if self.args.average_tokens_across_devices:
            # N counts every rank's tokens and DDP averages the gradients across ranks: multiply
            # back, as Trainer.compute_loss does (tensor-parallel ranks share one batch).
            tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
            loss = loss * (self.accelerator.num_processes // tp if self.args.n_gpu <= 1
                           else self.args.n_gpu)
        return loss, outputs

    def _target_logprobs(self, model, inputs, labels, entropy=False):
        """``(logp, mask, outputs)`` of one forward, ``logp``/``mask`` ``(B, T)`` in
        :func:`infosft.loss.target_logprobs`' layout (``logp[:, t]`` predicts token t + 1);
        with ``entropy``, a fourth: each target's top-20 entropy ``(B, T)``, detached."""
        if self._target_head:
            if entropy:
                outputs = model(**inputs, target_labels=labels, target_entropy=True)
                return outputs.log_probs, outputs.label_mask, outputs, outputs.entropy_top20
            outputs = model(**inputs, target_labels=labels)
            return outputs.log_probs, outputs.label_mask, outputs
        # No labels to the model: it would add a full-vocabulary loss of its own.
        outputs = model(**inputs)
        got = target_logprobs(outputs.logits, labels, self.weighted_loss.chunk_elements,
                              entropy=entropy)
        return (got[0], got[1], outputs, *got[2:])

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # a training log: the weights of the tokens seen since the last one
            stats = self.weighted_loss.pop_stats()
            logs.update({k: v for k, v in stats.items()
                         if k != "target_tokens" and v is not None})
        super().log(logs, *args, **kwargs)


class WeightedTrainer(_WeightedLossMixin, Trainer):
    """``transformers.Trainer`` with the weighted loss.

    Args:
        model, args, **kwargs: as for ``Trainer`` (no ``compute_loss_func``); without a
            ``data_collator`` the batches are padded by :class:`WeightedCollator`.
        scheme, mode, C, P, threshold, direction, seed: the scheme and its knobs
            (:func:`infosft.weights.resolve_knobs`); ``static`` takes each token's weight
            from the batch's ``weights``. Other knobs (``alpha``, ``keep``, ``per``, a
            ``module:function`` scheme's) by name or in ``knobs={...}``.
        reference_model: a loaded model whose target log-probs (``logp_ref``) the
            ``excess`` scheme (or a user scheme reading ``logp_ref``) compares against:
            one no-grad forward per micro-batch, eval mode, the trained model's device and
            dtype. Required by such schemes online, unused otherwise.
    """

    def __init__(self, model: Any = None, args: Any = None, **kwargs: Any):
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = WeightedCollator(pad_id_of(kwargs.get("processing_class")))
        super().__init__(model, args, **kwargs)


# ---------------------------------------------------------------- TRL


def _cut_weights(example: dict[str, Any], cut: slice) -> dict[str, Any]:
    return {WEIGHTS: example[WEIGHTS][cut]}


def _has_fused_head(model: Any) -> bool:
    """Whether TRL patched ``model``'s forward with its fused LM head (``SFTTrainer`` does
    in ``__init__`` since TRL 1.16; on a PEFT model, the base model's)."""
    try:
        from trl.trainer.utils import add_fused_lm_head  # noqa: F401
    except ImportError:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = getattr(vars(base).get("forward"), "__func__", None)  # an instance's own forward
    return getattr(getattr(forward, "__code__", None), "co_name", None) == "_fused_forward"


def _sft_trainer_class() -> type:
    try:
        from trl import SFTTrainer
        from trl.data_utils import get_dataset_column_names
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    except ImportError:
        raise InfosftError(TRL_MISSING) from None

    class WeightedSFTTrainer(_WeightedLossMixin, SFTTrainer):
        """TRL's ``SFTTrainer`` with the weighted loss.

        Args:
            model, args, **kwargs: as for ``SFTTrainer`` (no ``compute_loss_func``).
            scheme, mode, C, P, threshold, direction, seed: the scheme and its knobs
                (:func:`infosft.weights.resolve_knobs`); ``static`` takes each token's
                weight from the dataset's ``weights`` column, which must hold one float per
                ``input_ids`` token (an ``infosft export`` file). Other knobs (``alpha``,
                ``keep``, ``per``, a ``module:function`` scheme's) by name or in ``knobs``.
            reference_model: as for :class:`WeightedTrainer` (excess's ``logp_ref``).
        """

        def __init__(self, *args: Any, **kwargs: Any):
            own_collator = kwargs.get("data_collator") is not None
            super().__init__(*args, **kwargs)
            collator = self.data_collator
            # TRL's collator drops the weights (and refuses a custom one with padding_free):
            # swap in ours with the same settings.
            if (self.weighted_loss.mode == "static" and not own_collator
                    and isinstance(collator, DataCollatorForLanguageModeling)):
                self.data_collator = WeightedCollator(
                    collator.pad_token_id, padding_free=collator.padding_free,
                    pad_to_multiple_of=collator.pad_to_multiple_of,
                    return_position_ids=collator.return_position_ids)

        def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func,
                             dataset_name):
            columns = get_dataset_column_names(dataset)
            static = self.weighted_loss.mode == "static"
            if static and WEIGHTS not in columns and dataset_name == "train":
                raise InfosftError("static mode needs a 'weights' column in the train dataset "
                                   "(a dataset written by `infosft export`); it has "
                                   f"{', '.join(columns)}")
            if static and WEIGHTS in columns:
                if packing:
                    raise InfosftError("static weights do not survive TRL's packing (it keeps "
                                       "only input_ids and labels); use padding_free=True instead")
                if "input_ids" not in columns:
                    raise InfosftError("static 'weights' need the 'input_ids' they were made for "
                                       f"in the {dataset_name} dataset")
            if (WEIGHTS in columns and "input_ids" in columns and not packing
                    and args.max_length is not None):
                # TRL cuts input_ids and labels to max_length and leaves the other columns
                # whole: cut the weights by the same slice first.
                n = args.max_length
                cut = slice(-n, None) if args.truncation_mode == "keep_end" else slice(None, n)
                dataset = dataset.map(_cut_weights, fn_kwargs={"cut": cut})
            return super()._prepare_dataset(dataset, processing_class, args, packing,
                                            formatting_func, dataset_name)

        def _uses_fused_head(self) -> bool:
            return _has_fused_head(self.model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = self._weighted_loss(model, inputs, return_outputs, num_items_in_batch)
            if self._fused and not return_outputs:  # the fused head's outputs
                if model.training and getattr(outputs, "aux_loss", None) is not None:
                    # MoE load balancing, as TRL adds it: a per-micro-batch mean, averaged over
                    # the step here since training_step leaves the loss as it is
                    steps = getattr(self, "current_gradient_accumulation_steps", 1)
                    loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
                self._record_metrics(outputs, inputs)
            return (loss, outputs) if return_outputs else loss

        def _target_logprobs(self, model, inputs, labels, entropy=False):
            if not self._fused:  # (EAFT's entropy never takes the fused head)
                return super()._target_logprobs(model, inputs, labels, entropy)
            if self.aux_loss_enabled:
                inputs["output_router_logits"] = True
            outputs = model(**inputs, labels=labels, fused_lm_head=True)
            # (B, T - 1) -> (B, T), target_logprobs' layout, so the weights (static ones and
            # ProFit-random's draw included) line up exactly as on the chunked path.
            logp = F.pad(outputs.log_probs.float(), (0, 1))
            mask = F.pad(outputs.label_mask, (0, 1), value=False)
            return logp, mask, outputs

        def _record_metrics(self, outputs, inputs) -> None:
            """The metrics SFTTrainer logs (entropy, mean_token_accuracy, num_tokens), from
            the fused outputs: its compute_loss, which records them, is not called."""
            mode = "train" if self.model.training else "eval"
            gather = self.accelerator.gather_for_metrics
            n = gather(outputs.label_mask.sum()).sum()
            for name, per_token in (("entropy", outputs.entropy),
                                    ("mean_token_accuracy", outputs.is_top1)):
                if per_token is not None:
                    total = gather(per_token.detach().sum()).sum()
                    self._metrics[mode][name].append((total / n).item() if n > 0 else 0.0)
            if mode == "train":
                if "attention_mask" in inputs:
                    local = inputs["attention_mask"].sum()
                else:  # padding-free: one row of real tokens
                    ids = inputs["input_ids"]
                    local = torch.tensor(ids.size(1), device=ids.device)
                self._total_train_tokens += gather(local).sum().item() // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    WeightedSFTTrainer.__qualname__ = "WeightedSFTTrainer"
    WeightedSFTTrainer.__module__ = __name__
    return WeightedSFTTrainer


def __getattr__(name: str) -> Any:
    # WeightedSFTTrainer is built on first use, so that this module imports without TRL.
    if name == "WeightedSFTTrainer":
        cls = globals()[name] = _sft_trainer_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
