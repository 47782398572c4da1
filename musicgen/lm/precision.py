"""Generation copies of the MusicGen LM with cheaper linear layers, for CPU decoding, where
every step reads all the weights for a few rows and memory traffic bounds the speed.

* ``float32``: on the CPU (with oneDNN), the linear layers' weights reordered once by oneDNN
  for products with a few rows (:class:`PackedLinear`: about 2x faster at batch 1 than the
  plain product, logits equal up to float32 rounding); elsewhere a plain copy;
* ``bfloat16``: the linear layers' weights in bf16 (packed the same way on the CPU), run under
  bf16 autocast (activations are cast to bf16 for the matmuls; embeddings, norms and the
  residual stream stay float32);
* ``int8``: the linear layers quantized dynamically (``torch.ao.quantization.quantize_dynamic``:
  int8 weights per tensor, activations quantized per call, float32 in and out).

The last two change the logits slightly (see ``tests/test_lm_fast.py`` for the agreement with
float32). A copy is for generation only (no gradients): its parameter names and types differ
(the cross-attention ``in_proj`` is split into ``query`` and ``key_value`` first).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from musicgen.lm.transformer import CrossAttention

if TYPE_CHECKING:
    from musicgen.lm.model import MusicLM

PRECISIONS = ("float32", "bfloat16", "int8")
PACKED_ROWS = 2  # oneDNN's hint: the rows of a decoding step at batch 1 with CFG


class PackedLinear(nn.Module):
    """An ``nn.Linear`` for inference on the CPU, its weight converted to ``dtype`` and
    reordered by oneDNN for products with a few rows; inputs are cast to ``dtype``."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features, self.dtype = (
            linear.in_features,
            linear.out_features,
            dtype,
        )
        weight = linear.weight.detach().to(dtype)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_ROWS)
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def packable(lm: MusicLM, dtype: torch.dtype) -> bool:
    """Whether oneDNN can pack ``lm``'s (float32, CPU) linear layers in ``dtype``."""
    return (
        torch.backends.mkldnn.is_available()
        and lm.emb.device.type == "cpu"
        and lm.heads.weight.dtype == torch.float32
        and (dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


def pack_linears(module: nn.Module, dtype: torch.dtype) -> None:
    """Replace every ``nn.Linear`` inside ``module`` by a :class:`PackedLinear` in ``dtype``."""
    for child_name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, child_name, PackedLinear(child, dtype))
        else:
            pack_linears(child, dtype)


def generation_copy(lm: MusicLM, precision: str, inplace: bool = False) -> MusicLM:
    """A copy of ``lm`` in eval mode whose linear layers run at ``precision``; ``inplace``
    converts ``lm`` itself (no second copy of the weights in memory: a large model on a small
    machine)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    fast = (lm if inplace else copy.deepcopy(lm)).eval()
    fast.precision = precision
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    if precision == "float32" and not packable(fast, dtype):
        return fast
    for module in fast.modules():
        if isinstance(module, CrossAttention):
            module.split_projections()
    if precision != "int8" and packable(fast, dtype):
        pack_linears(fast, dtype)
        return fast
    if precision == "bfloat16":
        for module in fast.modules():
            if isinstance(module, nn.Linear):
                module.to(torch.bfloat16)
        return fast
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(fast, {nn.Linear}, dtype=torch.qint8, inplace=True)


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for a ``bfloat16`` copy; nothing otherwise."""
    if precision == "bfloat16":
        return torch.autocast(device.type, torch.bfloat16)
    return contextlib.nullcontext()
