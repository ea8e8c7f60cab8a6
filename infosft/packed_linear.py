"""Faster fp32 inference on CPU: linear layers through oneDNN on prepacked weights.

On CPU, PyTorch multiplies an fp32 ``nn.Linear`` with MKL's sgemm on the weight as
stored. oneDNN, which every x86 PyTorch wheel bundles, multiplies against a weight
reordered once into its own blocked layout, and on the development machine (2 AMD
EPYC cores) that is ~1.3x faster on a transformer's shapes (~200 instead of ~150
GFLOP/s) and ~1.8x on the vocabulary projection. Scoring is ~80% such products, so
it runs inside ``packed_linears``. Results move only by fp32 summation order
(|Δ logp| ~1e-5).

``INFOSFT_PACKED_LINEAR=0`` turns it off (plain ``nn.Linear``), e.g. to rule it out
when results differ between machines.

oneDNN and its wrapper ideep cache a compiled primitive per input shape, up to 1024
each by default. Scoring batches have a new row count almost every time, so those
caches grew the process by ~35 MB a minute over a full GSM8K run. A batch uses about
six shapes, so both caches are capped at 16 here (the variables are read at oneDNN's
first use, and a value set by the user wins).
"""

from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import torch

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")  # ideep's


def supported() -> bool:
    """Whether this torch build has the oneDNN ops (x86 and aarch64 CPU wheels do)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight"))


def pack_weight(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """A linear layer's weight ``(out, in)``, reordered for oneDNN (an opaque mkldnn
    tensor, same shape). ``batch_hint``: the typical number of input rows; any count works."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)


def packed_linear(x: torch.Tensor, packed: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """``x (..., in) @ W.T + bias`` -> ``(..., out)`` with ``W`` from ``pack_weight``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _eligible(module: torch.nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (isinstance(module, torch.nn.Linear) and isinstance(w, torch.Tensor)
            and w.device.type == "cpu" and w.dtype == torch.float32
            and w.layout == torch.strided and w.dim() == 2)


@contextmanager
def packed_linears(model: torch.nn.Module, batch_hint: int = 2048,
                   backward: bool = False) -> Iterator[int]:
    """Within the block, every fp32 CPU ``nn.Linear`` of ``model`` computes through
    oneDNN on a prepacked weight; on exit the layers are as before, weights bit for bit.

    For inference only: the packed layers have no gradient. A weight used by one layer
    only is held packed alone while in the block (no extra memory; anything reading
    ``layer.weight`` meanwhile sees an empty tensor); a shared one, such as an output
    projection tied to the input embedding, keeps its dense copy too. Yields the number
    of layers swapped: 0 on GPU, for other dtypes, without oneDNN, or when
    ``INFOSFT_PACKED_LINEAR=0``.

    With ``backward=True`` (training with frozen base weights, as in LoRA), only layers
    whose weight does not require grad are swapped, and they pass gradients on to their
    input through a second packed copy, of ``W.T``: ``grad_x = grad_y @ W`` is a linear
    layer with weight ``W.T``. Their weights get no gradient, as before. A LoRA step's
    frozen products run ~1.3x faster this way, for one extra copy of those weights.
    """
    if os.environ.get("INFOSFT_PACKED_LINEAR", "1") == "0" or not supported():
        yield 0
        return
    users = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    swapped: list[tuple[torch.nn.Module, torch.Tensor | None]] = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if not _eligible(module) or "forward" in module.__dict__:
                    continue
                if backward and (module.weight.requires_grad or (
                        module.bias is not None and module.bias.requires_grad)):
                    continue  # trained: its weight needs its dense self and a gradient
                try:
                    packed = pack_weight(module.weight, batch_hint)
                    packed_t = (pack_weight(module.weight.t().contiguous(), batch_hint)
                                if backward else None)
                except RuntimeError:  # a shape or build oneDNN does not take: stay dense
                    continue
                bias = None if module.bias is None else module.bias.detach()
                module.forward = (_forward(packed, bias) if packed_t is None
                                  else _frozen_forward(packed, packed_t, bias))
                keep = users[id(module.weight)] > 1
                if not keep:
                    module.weight.data = torch.empty(0)
                swapped.append((module, None if keep else packed))
        yield len(swapped)
    finally:
        with torch.no_grad():
            while swapped:  # one layer at a time, so packed and dense copies never all coexist
                module, packed = swapped.pop()
                del module.forward
                if packed is not None:
                    module.weight.data = packed.to_dense()
                del packed


def _forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return packed_linear(x, packed, bias)
    return forward


class _FrozenPackedLinear(torch.autograd.Function):
    """``x @ W.T + b`` on packed ``W``, with the gradient to ``x`` only, on packed ``W.T``."""

    @staticmethod
    def forward(ctx, x, packed, packed_t, bias):
        ctx.packed_t = packed_t
        return packed_linear(x, packed, bias)

    @staticmethod
    def backward(ctx, grad):
        return packed_linear(grad.contiguous(), ctx.packed_t, None), None, None, None


def _frozen_forward(packed: torch.Tensor, packed_t: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return _FrozenPackedLinear.apply(x, packed, packed_t, bias)
    return forward
