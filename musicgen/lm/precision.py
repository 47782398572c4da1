"""Generation copies of the MusicGen LM with cheaper linear layers, for CPU decoding, where
every step reads all the weights for a few rows and memory traffic bounds the speed.

* ``bfloat16``: the linear layers' weights in bf16, run under bf16 autocast (activations are
  cast to bf16 for the matmuls; embeddings, norms and the residual stream stay float32);
* ``int8``: the linear layers quantized dynamically (``torch.ao.quantization.quantize_dynamic``:
  int8 weights per tensor, activations quantized per call, float32 in and out).

Both change the logits slightly (see ``tests/test_lm_fast.py`` for the agreement with float32);
``float32`` is a plain copy. A copy is for generation only: its parameter names and types differ
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


def generation_copy(lm: MusicLM, precision: str) -> MusicLM:
    """A copy of ``lm`` in eval mode whose linear layers run at ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    fast = copy.deepcopy(lm).eval()
    fast.precision = precision
    if precision == "float32":
        return fast
    for module in fast.modules():
        if isinstance(module, CrossAttention):
            module.split_projections()
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
