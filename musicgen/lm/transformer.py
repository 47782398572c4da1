"""Building blocks of the MusicGen decoder: sinusoidal positions, a preallocated key/value
cache, causal self-attention on ``scaled_dot_product_attention``, cross-attention on the
conditions and the (pre-norm) layer.

Layer parameter names follow AudioCraft's ``StreamingTransformerLayer`` (``self_attn.in_proj``
packing query, key and value, ``self_attn.out_proj``, ``cross_attention``, ``norm_cross``,
``linear1``, ``linear2``, ``norm1``, ``norm2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from musicgen.lm.config import LMConfig


class SinusoidalPositions(nn.Module):
    """AudioCraft's ``create_sin_embedding``: ``[cos(p w), sin(p w)]`` with
    ``w_i = max_period ** (-i / (dim / 2 - 1))``, from a table that grows on demand. The table
    is a plain attribute, not a buffer: its length depends on the sequences a process has seen,
    and DDP broadcasts rank 0's buffers into same-sized ones (a longer table on another rank is
    a collective size mismatch)."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float64) / max(half - 1, 1)
        self.register_buffer(
            "inv_freq", (max_period**-exponent).to(torch.float32), persistent=False
        )
        self.table = self._table(0)

    def _table(self, length: int) -> torch.Tensor:
        positions = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)
        phase = positions[:, None] * self.inv_freq.float()
        return torch.cat([phase.cos(), phase.sin()], dim=-1)

    def forward(self, start: int, length: int, dtype: torch.dtype) -> torch.Tensor:
        """``(length, dim)`` embeddings of positions ``start .. start + length - 1``."""
        if start + length > self.table.shape[0] or self.table.device != self.inv_freq.device:
            self.table = self._table(max(2 * self.table.shape[0], start + length, 256))
        return self.table[start : start + length].to(dtype)


class KVCache:
    """Keys and values of every layer, ``(B, H, capacity, head_dim)`` each, allocated at the
    first write and filled up to ``length``; ``key_valid`` ``(B, capacity)`` marks the keys that
    may be attended to (None: all). ``cross`` holds the cross-attention keys/values of the
    conditions, per layer, computed once per generation, and ``cross_mask`` their mask."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.key_valid: torch.Tensor | None = None
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.cross_mask: torch.Tensor | None = None
        self._layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new ``keys``/``values`` ``(B, H, n, D)`` of ``layer`` after the cached ones;
        returns all of them so far."""
        end = self.length + keys.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache of {self.capacity} positions cannot hold {end}")
        if layer not in self._layers:
            shape = (*keys.shape[:2], self.capacity, keys.shape[3])
            self._layers[layer] = (keys.new_empty(shape), values.new_empty(shape))
        cached_keys, cached_values = self._layers[layer]
        cached_keys[:, :, self.length : end] = keys
        cached_values[:, :, self.length : end] = values
        return cached_keys[:, :, :end], cached_values[:, :, :end]


def attention_mask(
    queries: int, offset: int, key_valid: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """``(mask, causal)`` for ``queries`` positions starting at ``offset`` over the keys
    ``0 .. offset + queries - 1``: causal, without the keys that ``key_valid (B, keys)`` marks
    False (a query always sees itself, so no row is empty). The boolean mask (True = attend,
    ``(queries, keys)`` or ``(B, 1, queries, keys)``) is None when ``causal`` alone says it all
    or nothing is masked."""
    if key_valid is None and offset == 0:
        return None, True
    if key_valid is None and queries == 1:
        return None, False
    query_pos = torch.arange(offset, offset + queries, device=device)[:, None]
    key_pos = torch.arange(offset + queries, device=device)[None, :]
    allowed = key_pos <= query_pos
    if key_valid is not None:
        allowed = (allowed & key_valid[:, None, :]) | (key_pos == query_pos)
        allowed = allowed[:, None]
    return allowed, False


class SelfAttention(nn.Module):
    """Multi-head self-attention with packed query/key/value projection."""

    def __init__(self, dim: int, num_heads: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.in_proj = nn.Linear(dim, 3 * dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """``x (B, n, dim)``; ``mask``/``causal`` from :func:`attention_mask`."""
        batch, length, dim = x.shape
        qkv = self.in_proj(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        query, keys, values = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            keys, values = cache.update(layer, keys, values)
        out = F.scaled_dot_product_attention(
            query,
            keys,
            values,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and mask is None,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


def cross_attention_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """Boolean mask ``(B, 1, 1, P)`` of the condition positions ``valid (B, P)`` marks True;
    a row with none valid attends to all of them (its zero vectors: transformers' fully masked
    rows give the same); None when nothing is masked."""
    if valid is None:
        return None
    valid = valid.bool() | ~valid.bool().any(dim=1, keepdim=True)
    return None if bool(valid.all()) else valid[:, None, None, :]


class CrossAttention(nn.Module):
    """Multi-head attention from the decoder states to the conditions; ``in_proj`` packs the
    query, key and value projections (AudioCraft's ``in_proj_weight`` layout)."""

    def __init__(self, dim: int, num_heads: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.in_proj = nn.Linear(dim, 3 * dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def _project(self, x: torch.Tensor, part: str) -> torch.Tensor:
        """The ``query`` or ``key_value`` rows of ``in_proj`` applied to ``x`` (the layers of
        those names after :meth:`split_projections`)."""
        if "in_proj" not in self._modules:
            return getattr(self, part)(x)
        dim = x.shape[-1]
        rows = slice(None, dim) if part == "query" else slice(dim, None)
        bias = None if self.in_proj.bias is None else self.in_proj.bias[rows]
        return F.linear(x, self.in_proj.weight[rows], bias)

    def split_projections(self) -> None:
        """Replace the packed ``in_proj`` by two ``nn.Linear``, ``query`` and ``key_value``
        (same weights), so that conversions acting on whole linear layers (bf16 weights, dynamic
        int8 quantization) apply to each; for generation copies (the parameter names change)."""
        packed, dim = self.in_proj, self.in_proj.in_features
        bias = packed.bias is not None
        self.query = nn.Linear(dim, dim, bias=bias)
        self.key_value = nn.Linear(dim, 2 * dim, bias=bias)
        with torch.no_grad():
            for layer, rows in ((self.query, slice(None, dim)), (self.key_value, slice(dim, None))):
                layer.weight.copy_(packed.weight[rows])
                if bias:
                    layer.bias.copy_(packed.bias[rows])
        del self.in_proj

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(B, H, P, head_dim)`` of the conditions ``source (B, P, dim)``."""
        keys, values = self._project(source, "key_value").chunk(2, dim=-1)
        return self._heads(keys), self._heads(values)

    def forward(
        self,
        x: torch.Tensor,
        keys_values: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``x (B, n, dim)`` attends to :meth:`keys_values`; ``mask`` from
        :func:`cross_attention_mask`."""
        query = self._heads(self._project(x, "query"))
        out = F.scaled_dot_product_attention(
            query,
            *keys_values,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TransformerLayer(nn.Module):
    """Self-attention, (with ``cross_attention``) cross-attention and GELU feed-forward blocks,
    pre-norm (``norm_first``) or post-norm."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg.dim, cfg.num_heads, cfg.bias, cfg.dropout)
        self.cross_attention: CrossAttention | None = None
        self.norm_cross: nn.LayerNorm | None = None
        if cfg.cross_attention:
            self.cross_attention = CrossAttention(cfg.dim, cfg.num_heads, cfg.bias, cfg.dropout)
            self.norm_cross = nn.LayerNorm(cfg.dim)
        self.linear1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=cfg.bias)
        self.linear2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=cfg.bias)
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.norm_first = cfg.norm_first
        self.dropout = cfg.dropout

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._drop(self.linear2(self._drop(F.gelu(self.linear1(x)))))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        cache: KVCache | None,
        layer: int,
        cross: tuple[torch.Tensor, torch.Tensor] | None = None,
        cross_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``cross``: this layer's :meth:`CrossAttention.keys_values` of the conditions (with a
        cross-attention block)."""
        if self.norm_first:
            x = x + self._drop(self.self_attn(self.norm1(x), mask, causal, cache, layer))
            if self.cross_attention is not None:
                x = x + self._drop(self.cross_attention(self.norm_cross(x), cross, cross_mask))
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._drop(self.self_attn(x, mask, causal, cache, layer)))
        if self.cross_attention is not None:
            x = self.norm_cross(x + self._drop(self.cross_attention(x, cross, cross_mask)))
        return self.norm2(x + self._feed_forward(x))
