"""MusicGen's language model: a decoder-only transformer over K parallel codebook streams laid
out by the delay pattern, with conditions prepended as a prefix of embeddings.

The input at each step is the sum of K token embeddings (``card + 1`` entries each; the last
is the special token), plus sinusoidal positions; the decoder is causal over
``[prefix, steps]`` (with ``cross_attention`` the conditions are not prepended: every layer
attends to them through its cross-attention block, as the text-only MusicGen models read T5;
their keys and values are computed once per generation); K heads (one fused linear layer) give the logits of the next step of every
codebook. Weights are initialised as AudioCraft's ``weight_init=gaussian,
depthwise_init=current`` (truncated normal, std ``1 / sqrt(fan_in)``, divided by
``sqrt(2 * depth)`` inside layer ``depth``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from musicgen.lm.config import LMConfig
from musicgen.lm.loss import IGNORE, heads_cross_entropy
from musicgen.lm.pattern import DelayPattern
from musicgen.lm.precision import generation_copy, precision_context
from musicgen.lm.sampling import sample_next
from musicgen.lm.transformer import (
    KVCache,
    SinusoidalPositions,
    TransformerLayer,
    attention_mask,
    cross_attention_mask,
)

UNKNOWN = -1  # a sequence position still to be generated


@dataclass
class LMLoss:
    """Cross-entropy over the valid positions: ``loss``, the mean over all codebooks (with a
    gradient), and per codebook (``(K,)``, no gradient: for logging)."""

    loss: torch.Tensor
    ce_per_codebook: torch.Tensor
    ppl_per_codebook: torch.Tensor


def _trunc_normal_(weight: torch.Tensor, fan_in: int, depth: int | None = None) -> None:
    std = 1.0 / math.sqrt(fan_in) / (math.sqrt(2 * depth) if depth else 1.0)
    nn.init.trunc_normal_(weight, std=std, a=-3 * std, b=3 * std)


class MusicLM(nn.Module):
    """Decoder-only transformer over ``n_q`` delayed codebook streams; see the module docstring."""

    def __init__(self, config: LMConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or LMConfig()
        self.pattern = DelayPattern(cfg.n_q, cfg.delays)
        self.special = cfg.card
        self.emb = nn.Parameter(torch.empty(cfg.n_q, cfg.card + 1, cfg.dim))
        self.register_buffer(
            "emb_offsets", torch.arange(cfg.n_q) * (cfg.card + 1), persistent=False
        )
        self.positions = SinusoidalPositions(cfg.dim, cfg.max_period)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.out_norm = nn.LayerNorm(cfg.dim) if cfg.norm_first else nn.Identity()
        self.heads = nn.Linear(cfg.dim, cfg.n_q * cfg.card, bias=cfg.bias)
        self.precision = "float32"  # of the linear layers; see for_generation
        self.reset_parameters()

    def reset_parameters(self) -> None:
        cfg = self.config
        _trunc_normal_(self.emb, cfg.dim)
        for depth, layer in enumerate(self.layers, start=1):
            for module in layer.modules():
                if isinstance(module, nn.Linear):
                    _trunc_normal_(module.weight, module.in_features, depth)
                if isinstance(module, nn.Linear | nn.LayerNorm) and module.bias is not None:
                    nn.init.zeros_(module.bias)
                if isinstance(module, nn.LayerNorm):
                    nn.init.ones_(module.weight)
        _trunc_normal_(self.heads.weight, cfg.dim)
        if self.heads.bias is not None:
            nn.init.zeros_(self.heads.bias)

    # ------------------------------------------------------------------ decoder
    def _hidden(
        self,
        seq: torch.Tensor,
        prefix: torch.Tensor | None,
        prefix_mask: torch.Tensor | None,
        cache: KVCache | None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Final hidden states ``(B, S, dim)`` of the ``seq (B, K, S)`` positions (``(B, dim)`` of
        the last one with ``last_only``)."""
        cfg = self.config
        batch, n_q, steps = seq.shape
        if n_q != cfg.n_q:
            raise ValueError(f"expected {cfg.n_q} codebooks, got seq of shape {tuple(seq.shape)}")
        tokens = (seq + self.emb_offsets[:, None]).transpose(1, 2).reshape(-1, n_q)
        x = F.embedding_bag(tokens, self.emb.view(-1, cfg.dim), mode="sum")
        x = x.view(batch, steps, cfg.dim)
        offset = 0 if cache is None else cache.length
        key_valid = None if cache is None else cache.key_valid
        cross, cross_mask = None, None
        if cfg.cross_attention:
            cross, cross_mask = self._cross(prefix, prefix_mask, cache, batch)
            prefix = None
        if prefix is not None:
            if offset:
                raise ValueError("the prefix goes with the first call on a KV cache")
            if prefix.dim() != 3 or prefix.shape[0] != batch or prefix.shape[2] != cfg.dim:
                raise ValueError(
                    f"prefix must be (B={batch}, P, dim={cfg.dim}), got {tuple(prefix.shape)}"
                )
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
            if prefix_mask is not None and not bool(prefix_mask.all()):
                key_valid = F.pad(prefix_mask.bool(), (0, steps), value=True)
                if cache is not None:
                    key_valid = F.pad(key_valid, (0, cache.capacity - x.shape[1]), value=True)
                    cache.key_valid = key_valid
        length = x.shape[1]
        x = x + self.positions(offset, length, x.dtype)
        if key_valid is not None:
            key_valid = key_valid[:, : offset + length]
        mask, causal = attention_mask(length, offset, key_valid, x.device)
        for index, layer in enumerate(self.layers):
            x = layer(x, mask, causal, cache, index, cross and cross[index], cross_mask)
        if cache is not None:
            cache.length += length
        return self.out_norm(x[:, -1] if last_only else x[:, length - steps :])

    def _cross(
        self,
        conditions: torch.Tensor | None,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        batch: int,
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
        """Per layer, the cross-attention keys/values of ``conditions (B, P, dim)`` and their
        mask (``mask (B, P)`` False: not attended); from the ``cache`` after its first call."""
        if cache is not None and cache.cross is not None:
            if conditions is not None:
                raise ValueError("the conditions go with the first call on a KV cache")
            return cache.cross, cache.cross_mask
        dim = self.config.dim
        if conditions is None or conditions.dim() != 3 or conditions.shape[::2] != (batch, dim):
            shape = None if conditions is None else tuple(conditions.shape)
            raise ValueError(
                f"a cross-attention LM needs conditions (B={batch}, P, dim={dim}), got {shape}"
            )
        conditions = conditions.to(self.emb.dtype)
        cross = [layer.cross_attention.keys_values(conditions) for layer in self.layers]
        cross_mask = cross_attention_mask(mask)
        if cache is not None:
            cache.cross, cache.cross_mask = cross, cross_mask
        return cross, cross_mask

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` -> ``(..., K, card)``."""
        return self.heads(hidden).unflatten(-1, (self.config.n_q, self.config.card))

    def forward(
        self,
        seq: torch.Tensor,
        prefix: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, K, S, card)`` of the step after each step of ``seq (B, K, S)`` (token ids
        in ``[0, card]``). ``prefix (B, P, dim)`` (condition embeddings, ``prefix_mask (B, P)``
        False where absent) is prepended (cross-attended with ``cross_attention``); with a
        ``cache`` it goes with the first call only."""
        return self._logits(self._hidden(seq, prefix, prefix_mask, cache)).transpose(1, 2)

    def compute_loss(
        self,
        codes: torch.Tensor,
        prefix: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> LMLoss:
        """Teacher-forced cross-entropy of ``codes (B, K, T)`` laid out by the delay pattern,
        over the valid positions only: not the pattern's padding and, when ``valid (B, T)`` is
        given, not the frames it marks False."""
        seq, mask = self.pattern.build(codes, self.special)
        target_mask = mask[None, :, 1:]
        if valid is not None:
            frames_ok, _ = self.pattern.build(valid.long()[:, None].expand_as(codes), 0)
            target_mask = target_mask & frames_ok[:, :, 1:].bool()
        target = seq[:, :, 1:].masked_fill(~target_mask, IGNORE).transpose(1, 2)
        hidden = self._hidden(seq[:, :, :-1], prefix, prefix_mask, None)
        loss, ce_sums, counts = heads_cross_entropy(
            hidden.reshape(-1, self.config.dim),
            self.heads.weight,
            self.heads.bias,
            target.reshape(-1, self.config.n_q),
        )
        ce_per_codebook = ce_sums / counts.clamp(min=1)
        return LMLoss(loss, ce_per_codebook, ce_per_codebook.exp())

    # --------------------------------------------------------------- generation
    def for_generation(self, precision: str = "float32", inplace: bool = False) -> MusicLM:
        """A copy for :meth:`generate` whose linear layers run in ``precision``: faster decoding
        on CPU; ``float32`` with oneDNN-packed weights (the same logits up to rounding),
        ``bfloat16`` or ``int8`` (slightly different logits); see :mod:`musicgen.lm.precision`.
        ``inplace`` converts this model instead of a copy (it then only generates)."""
        return generation_copy(self, precision, inplace)

    def precision_context(self):
        """The autocast context this model's linear layers need (bf16 copies)."""
        return precision_context(self.precision, self.emb.device)

    @torch.no_grad()
    def generate(
        self,
        prefix: torch.Tensor | None = None,
        prefix_mask: torch.Tensor | None = None,
        null_prefix: torch.Tensor | None = None,
        null_prefix_mask: torch.Tensor | None = None,
        *,
        num_frames: int,
        prompt: torch.Tensor | None = None,
        cfg_coef: float = 3.0,
        temperature: float = 1.0,
        top_k: int = 250,
        top_p: float = 0.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        progress: bool = False,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """``num_frames`` frames of codes ``(B, K, num_frames)``.

        Conditioned on ``prefix``/``prefix_mask``; with ``null_prefix`` (the dropped condition,
        same shape) and ``cfg_coef != 1``, conditional and null rows run as one batch and the
        logits are ``null + cfg_coef * (cond - null)``. A ``prompt (B, K, Tp)`` is kept as the
        first ``Tp`` frames and generation continues after it. ``batch_size`` is needed only
        without prefix and prompt. See :func:`sample_next` for the sampling arguments.
        """
        batch = self._batch_size(prefix, prompt, batch_size)
        device = self.emb.device
        codes = torch.full((batch, self.config.n_q, num_frames), UNKNOWN, device=device)
        if prompt is not None:
            self._check_prompt(prompt, batch, num_frames)
            codes[:, :, : prompt.shape[2]] = prompt
        seq, _ = self.pattern.build(codes, self.special)
        todo = (seq == UNKNOWN).any(1).any(0).nonzero()
        if len(todo) == 0:
            return codes
        use_cfg = null_prefix is not None and cfg_coef != 1.0
        if use_cfg:
            prefix, prefix_mask = self._cfg_prefix(
                prefix, prefix_mask, null_prefix, null_prefix_mask
            )
        cache = None
        if use_cache:
            prepended = 0 if prefix is None or self.config.cross_attention else prefix.shape[1]
            cache = KVCache(prepended + seq.shape[2] - 1)
        steps = range(int(todo[0]), seq.shape[2])
        with self.precision_context():
            for step in tqdm(steps, disable=not progress, desc="generating", unit="step"):
                first = cache is None or cache.length == 0
                inputs = seq[:, :, :step] if first else seq[:, :, step - 1 : step]
                if use_cfg:
                    inputs = torch.cat([inputs, inputs])
                hidden = self._hidden(
                    inputs, prefix if first else None, prefix_mask if first else None, cache, True
                )
                logits = self._logits(hidden)
                if use_cfg:
                    cond, null = logits.float().chunk(2)
                    logits = null + cfg_coef * (cond - null)
                tokens = sample_next(logits, temperature, top_k, top_p, generator)
                column = seq[:, :, step]
                seq[:, :, step] = torch.where(column == UNKNOWN, tokens, column)
        return self.pattern.revert(seq, self.special)[0]

    def _batch_size(
        self, prefix: torch.Tensor | None, prompt: torch.Tensor | None, batch_size: int | None
    ) -> int:
        sizes = {x.shape[0] for x in (prefix, prompt) if x is not None}
        if batch_size is not None:
            sizes.add(batch_size)
        if len(sizes) != 1:
            raise ValueError(
                f"cannot tell the batch size: prefix, prompt and batch_size give {sorted(sizes)}"
            )
        return sizes.pop()

    def _check_prompt(self, prompt: torch.Tensor, batch: int, num_frames: int) -> None:
        expected = (batch, self.config.n_q)
        if prompt.dim() != 3 or tuple(prompt.shape[:2]) != expected:
            raise ValueError(
                f"prompt must be (B, K, Tp) = {expected + ('Tp',)}, got {prompt.shape}"
            )
        if prompt.shape[2] > num_frames:
            raise ValueError(f"prompt of {prompt.shape[2]} frames exceeds num_frames={num_frames}")
        if prompt.numel() and (int(prompt.min()) < 0 or int(prompt.max()) >= self.config.card):
            raise ValueError(f"prompt codes must lie in [0, {self.config.card})")

    @staticmethod
    def _cfg_prefix(
        prefix: torch.Tensor | None,
        prefix_mask: torch.Tensor | None,
        null_prefix: torch.Tensor,
        null_prefix_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional rows then null rows, as one batch."""
        if prefix is None or prefix.shape != null_prefix.shape:
            raise ValueError(
                "classifier-free guidance needs prefix and null_prefix of the same shape, got "
                f"{None if prefix is None else tuple(prefix.shape)} and {tuple(null_prefix.shape)}"
            )

        def full(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
            return x.new_ones(x.shape[:2], dtype=torch.bool) if mask is None else mask.bool()

        masks = [full(prefix_mask, prefix), full(null_prefix_mask, null_prefix)]
        return torch.cat([prefix, null_prefix]), torch.cat(masks)
