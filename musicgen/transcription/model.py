"""MT3's T5.1.1 encoder-decoder (magenta/mt3 ``network.py`` and ``layers.py``) in PyTorch.

As MT3 configures T5.1.1: a bias-free continuous projection of the 512 log-mel bins, fixed
sinusoidal position embeddings added to encoder and decoder inputs (sines in the first half
of the features, cosines in the second; no T5 relative attention bias anywhere),
pre-norm blocks with RMS layer norm (scale only, eps 1e-6), attention without the
``1/sqrt(head_dim)`` factor (T5 folds it into the initialisation of the query projection),
gated-GELU feed-forward (tanh GELU of ``wi_0`` times ``wi_1``), no biases, a separate output
projection (``logits_dense``), decoding starting from id 0 (PAD). MT3-small is the default
:class:`MT3Config`: d_model 512, 8 + 8 layers, 6 heads of 64, d_ff 1024, vocabulary 1536.

Weights map one-to-one onto an MT3 (t5x) checkpoint's ``target/...`` parameters; the torch
name is the t5x path with ``/`` as ``.``, ``layers_{i}`` as ``layers.{i}`` and the leaf
renamed::

    encoder.continuous_inputs_projection.weight   encoder/continuous_inputs_projection/kernel (T)
    encoder.layers.{i}.pre_attention_layer_norm.scale   encoder/layers_{i}/pre_attention_layer_norm/scale
    encoder.layers.{i}.attention.{query,key,value,out}.weight   .../attention/{...}/kernel (T)
    encoder.layers.{i}.pre_mlp_layer_norm.scale   encoder/layers_{i}/pre_mlp_layer_norm/scale
    encoder.layers.{i}.mlp.{wi_0,wi_1,wo}.weight   encoder/layers_{i}/mlp/{...}/kernel (T)
    encoder.encoder_norm.scale   encoder/encoder_norm/scale
    decoder.token_embedder.weight   decoder/token_embedder/embedding
    decoder.layers.{i}.pre_self_attention_layer_norm.scale, .self_attention.*,
        .pre_cross_attention_layer_norm.scale, .encoder_decoder_attention.*,
        .pre_mlp_layer_norm.scale, .mlp.*   (same paths under decoder/layers_{i}/)
    decoder.decoder_norm.scale   decoder/decoder_norm/scale
    decoder.logits_dense.weight   decoder/logits_dense/kernel (T)

``(T)``: t5x stores kernels as ``(in, out)`` (attention kernels flattened to
``(d_model, heads * head_dim)``), torch ``Linear`` weights are ``(out, in)``.
:func:`model_from_t5x` does the conversion; :meth:`MT3Model.from_t5x` reads a t5x checkpoint
directory (:mod:`musicgen.transcription.t5x_checkpoint`).

Decoding is greedy (MT3's paper; its t5x model runs beam search with one beam), batched over
segments, with a key/value cache (:meth:`MT3Model.greedy_decode`); ``use_cache=False``
recomputes the whole prefix every step, for benchmarks and tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musicgen.checkpoint_io import first_line
from musicgen.errors import UserError
from musicgen.transcription.frame_pitch import FrameInput, FramePitchHead, current_steps
from musicgen.transcription.grammar import GrammarSpec, TokenGrammar
from musicgen.transcription.t5x_checkpoint import read_t5x_checkpoint
from musicgen.transcription.time_pointer import TimePointer
from musicgen.transcription.vocabulary import EOS_ID, PAD_ID, VOCAB_SIZE, Granularity


@dataclass(frozen=True)
class MT3Config:
    """Sizes of the model; the defaults are MT3-small (``mt3/gin/model.gin``)."""

    vocab_size: int = VOCAB_SIZE
    input_depth: int = 512
    d_model: int = 512
    num_heads: int = 6
    head_dim: int = 64
    d_ff: int = 1024
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    dropout: float = 0.1
    max_positions: int = 2048  # rows of the fixed position table (MT3's FixedEmbed)
    # Not MT3: > 0 adds a residual convolution over time of this (odd) kernel after the input
    # projection (:class:`Encoder`), for small models; 0 (MT3) leaves the t5x layout unchanged.
    input_conv_kernel: int = 0
    # Not MT3: true adds a pointer from the decoder to the encoder frames to the shift logits
    # (:mod:`musicgen.transcription.time_pointer`), for small models; false (MT3) leaves the
    # t5x layout unchanged.
    time_pointer: bool = False
    # Not MT3: true adds a read-out of the encoder frame at the current time to the pitch
    # logits (:mod:`musicgen.transcription.frame_pitch`); false (MT3) keeps the t5x layout.
    pitch_from_frame: bool = False
    # Not MT3: true adds a projection of the encoder frame at the current time to the decoder's
    # input (:mod:`musicgen.transcription.frame_pitch`); false (MT3) keeps the t5x layout.
    frame_input: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> MT3Config:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown MT3Config fields {sorted(unknown)}; valid: {sorted(known)}")
        kernel = values.get("input_conv_kernel", 0)
        if kernel < 0 or (kernel and kernel % 2 == 0):
            raise ValueError(f"input_conv_kernel must be 0 or odd, got {kernel}")
        return cls(**values)


def sinusoidal_positions(length: int, features: int, max_scale: float = 10_000.0) -> torch.Tensor:
    """MT3's fixed position table ``(length, features)``: sines then cosines of
    ``position * exp(-ln(max_scale) * k / (features // 2 - 1))``."""
    return sinusoidal_embedding(torch.arange(length, dtype=torch.float64), features, max_scale)


def sinusoidal_embedding(
    positions: torch.Tensor, features: int, max_scale: float = 10_000.0
) -> torch.Tensor:
    """The rows of :func:`sinusoidal_positions` at any ``positions`` ``(N,)``, fractional or
    negative ones included (the same sines and cosines): ``(N, features)`` float32."""
    half = features // 2
    rates = torch.exp(torch.arange(half, dtype=torch.float64) * (-math.log(max_scale) / (half - 1)))
    angles = positions.to(torch.float64)[:, None] * rates
    table = torch.zeros(len(positions), features, dtype=torch.float64)
    table[:, :half], table[:, half : 2 * half] = torch.sin(angles), torch.cos(angles)
    return table.to(torch.float32)


class RMSNorm(nn.Module):
    """T5 layer norm: no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.scale).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention without biases and without logit scaling."""

    def __init__(self, cfg: MT3Config) -> None:
        super().__init__()
        inner = cfg.num_heads * cfg.head_dim
        self.num_heads, self.head_dim, self.dropout = cfg.num_heads, cfg.head_dim, cfg.dropout
        self.query = nn.Linear(cfg.d_model, inner, bias=False)
        self.key = nn.Linear(cfg.d_model, inner, bias=False)
        self.value = nn.Linear(cfg.d_model, inner, bias=False)
        self.out = nn.Linear(inner, cfg.d_model, bias=False)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, H * D)`` -> ``(B, H, L, D)``."""
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.key(x)), self.heads(self.value(x))

    def attend(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, causal: bool = False
    ) -> torch.Tensor:
        """Attention of the queries of ``x`` over ``keys``/``values`` (``(B, H, S, D)``)."""
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            self.heads(self.query(x)), keys, values, dropout_p=dropout, is_causal=causal, scale=1.0
        )
        return self.out(out.transpose(1, 2).reshape(*x.shape[:2], -1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, causal: bool = False) -> torch.Tensor:
        return self.attend(x, *self.keys_values(context), causal=causal)


class GatedGelu(nn.Module):
    """T5.1.1 feed-forward: ``wo(gelu_tanh(wi_0 x) * wi_1 x)``."""

    def __init__(self, cfg: MT3Config) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: MT3Config) -> None:
        super().__init__()
        self.pre_attention_layer_norm = RMSNorm(cfg.d_model)
        self.attention = Attention(cfg)
        self.pre_mlp_layer_norm = RMSNorm(cfg.d_model)
        self.mlp = GatedGelu(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre_attention_layer_norm(x)
        x = x + self.dropout(self.attention(h, h))
        return x + self.dropout(self.mlp(self.pre_mlp_layer_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MT3Config) -> None:
        super().__init__()
        self.pre_self_attention_layer_norm = RMSNorm(cfg.d_model)
        self.self_attention = Attention(cfg)
        self.pre_cross_attention_layer_norm = RMSNorm(cfg.d_model)
        self.encoder_decoder_attention = Attention(cfg)
        self.pre_mlp_layer_norm = RMSNorm(cfg.d_model)
        self.mlp = GatedGelu(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        position: int = 0,
    ) -> torch.Tensor:
        """Causal self-attention over ``x``; with ``cache`` (keys/values ``(B, H, max_len, D)``)
        ``x`` is the single step at ``position``, whose keys/values are written into it."""
        h = self.pre_self_attention_layer_norm(x)
        if cache is None:
            x = x + self.dropout(self.self_attention(h, h, causal=True))
        else:
            keys, values = cache
            end = position + x.shape[1]
            keys[:, :, position:end], values[:, :, position:end] = self.self_attention.keys_values(
                h
            )
            x = x + self.dropout(
                self.self_attention.attend(h, keys[:, :, :end], values[:, :, :end])
            )
        h = self.pre_cross_attention_layer_norm(x)
        x = x + self.dropout(self.encoder_decoder_attention.attend(h, *cross_kv))
        return x + self.dropout(self.mlp(self.pre_mlp_layer_norm(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: MT3Config) -> None:
        super().__init__()
        self.continuous_inputs_projection = nn.Linear(cfg.input_depth, cfg.d_model, bias=False)
        kernel = cfg.input_conv_kernel
        self.input_conv = (
            nn.Conv1d(cfg.d_model, cfg.d_model, kernel, padding=kernel // 2, bias=False)
            if kernel
            else None
        )
        self.register_buffer(
            "positions", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False
        )
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        self.encoder_norm = RMSNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, input_depth)`` -> ``(B, T, d_model)``. With ``input_conv``, the projected
        frames gain ``gelu(conv(x))``: each frame sees its neighbours (onsets are changes
        over time) before the position embeddings are added."""
        x = self.continuous_inputs_projection(frames)
        if self.input_conv is not None:
            x = x + F.gelu(self.input_conv(x.transpose(1, 2)).transpose(1, 2), approximate="tanh")
        x = x + self.positions[: frames.shape[1]]
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x)
        return self.dropout(self.encoder_norm(x))


@dataclass
class DecoderCache:
    """Keys/values of the decoded prefix (per layer ``(B, H, max_length, D)``, filled up to
    ``length``) and of the encoder output (computed once)."""

    self_kv: list[tuple[torch.Tensor, torch.Tensor]]
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]
    time_keys: torch.Tensor | None = None  # the time pointer's keys of the encoder output
    encoded: torch.Tensor | None = None  # the encoder output, for the frame pitch head
    steps: torch.Tensor | None = None  # the time in force (10 ms steps) per sequence
    length: int = 0


class Decoder(nn.Module):
    def __init__(self, cfg: MT3Config) -> None:
        super().__init__()
        self.token_embedder = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.register_buffer(
            "positions", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False
        )
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.decoder_norm = RMSNorm(cfg.d_model)
        self.logits_dense = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.time_pointer = TimePointer(cfg.d_model) if cfg.time_pointer else None
        self.frame_pitch = FramePitchHead(cfg.d_model) if cfg.pitch_from_frame else None
        self.frame_input = FrameInput(cfg.d_model) if cfg.frame_input else None
        self.dropout = nn.Dropout(cfg.dropout)

    def _output(
        self,
        x: torch.Tensor,
        time_keys: torch.Tensor | None,
        encoded: torch.Tensor | None,
        steps: torch.Tensor | None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of decoder outputs ``x``; ``time_keys`` for the time pointer, ``encoded`` and
        the time ``steps`` in force at each position for the frame pitch head (when present);
        only at the positions ``keep`` (``(N, vocab)``) when given."""
        states = self.dropout(self.decoder_norm(x))
        logits = self.logits_dense(states if keep is None else states[keep]).float()
        if self.time_pointer is not None:
            logits = self.time_pointer(logits, states, time_keys, keep)
        if self.frame_pitch is not None:
            logits = self.frame_pitch(logits, encoded, steps, keep)
        return logits

    def _time_keys(self, encoded: torch.Tensor) -> torch.Tensor | None:
        return None if self.time_pointer is None else self.time_pointer.keys(encoded)

    def forward(
        self, tokens: torch.Tensor, encoded: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits ``(B, L, vocab)`` for decoder inputs ``(B, L)``; with ``keep``
        (``(B, L)`` bool) only those positions' logits, ``(N, vocab)`` in row-major order (the
        training loss skips the vocabulary projection of padding)."""
        steps = current_steps(tokens) if self._needs_steps else None
        x = self._inputs(tokens, self.positions[: tokens.shape[1]], encoded, steps)
        for layer in self.layers:
            x = layer(x, layer.encoder_decoder_attention.keys_values(encoded))
        return self._output(x, self._time_keys(encoded), encoded, steps, keep)

    @property
    def _needs_steps(self) -> bool:
        return self.frame_pitch is not None or self.frame_input is not None

    def _inputs(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        encoded: torch.Tensor,
        steps: torch.Tensor | None,
    ) -> torch.Tensor:
        """Decoder inputs: token embeddings, positions and (option) the current time's frame."""
        x = self.token_embedder(tokens) + positions
        if self.frame_input is not None:
            x = x + self.frame_input(encoded, steps)
        return self.dropout(x)

    def init_cache(self, encoded: torch.Tensor, max_length: int) -> DecoderCache:
        batch = encoded.shape[0]
        cross = [layer.encoder_decoder_attention.keys_values(encoded) for layer in self.layers]
        empty = [
            tuple(encoded.new_zeros(batch, kv.shape[1], max_length, kv.shape[3]) for kv in pair)
            for pair in cross
        ]
        frames = self._needs_steps
        return DecoderCache(
            self_kv=empty,
            cross_kv=cross,
            time_keys=self._time_keys(encoded),
            encoded=encoded if frames else None,
            steps=encoded.new_zeros(batch, dtype=torch.long) if frames else None,
        )

    def step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """Logits ``(B, vocab)`` after the next input tokens ``(B,)``; updates ``cache``."""
        t = cache.length
        if cache.steps is not None:
            cache.steps = current_steps(tokens[:, None], cache.steps)[:, 0]
        steps = None if cache.steps is None else cache.steps[:, None]
        x = self._inputs(tokens[:, None], self.positions[t : t + 1], cache.encoded, steps)
        for layer, cached, cross in zip(self.layers, cache.self_kv, cache.cross_kv, strict=True):
            x = layer(x, cross, cached, t)
        cache.length = t + 1
        return self._output(x, cache.time_keys, cache.encoded, steps)[:, 0]


def _truncated_normal_(weight: torch.Tensor, std: float) -> None:
    """Flax's ``truncated_normal`` variance scaling: cut at two (corrected) deviations."""
    corrected = std / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=corrected, a=-2 * corrected, b=2 * corrected)


class MT3Model(nn.Module):
    """Log-mel frames ``(B, T, 512)`` in, token logits out; see the module docstring."""

    def __init__(self, cfg: MT3Config | None = None) -> None:
        super().__init__()
        self.config = cfg or MT3Config()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """T5X's initialisation: fan-in variance scaling, the query's divided by
        ``sqrt(head_dim)``, token embeddings N(0, 1), norms at 1."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = module.in_features**-0.5
                if name.endswith("query"):
                    nn.init.normal_(module.weight, std=std / math.sqrt(self.config.head_dim))
                elif name.rsplit(".", 1)[-1] in ("key", "value", "out"):
                    nn.init.normal_(module.weight, std=std)
                else:
                    _truncated_normal_(module.weight, std)
            elif isinstance(module, nn.Conv1d):
                fan_in = module.in_channels * module.kernel_size[0]
                _truncated_normal_(module.weight, fan_in**-0.5)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=1.0)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.scale)
        if self.decoder.time_pointer is not None:  # starts as the model without the pointer
            nn.init.zeros_(self.decoder.time_pointer.query.weight)
        if self.decoder.frame_pitch is not None:  # starts as the model without the read-out
            nn.init.zeros_(self.decoder.frame_pitch.readout.weight)
        if self.decoder.frame_input is not None:  # starts as the model without the frame input
            nn.init.zeros_(self.decoder.frame_input.projection.weight)

    def forward(self, frames: torch.Tensor, decoder_inputs: torch.Tensor) -> torch.Tensor:
        return self.decoder(decoder_inputs, self.encoder(frames))

    @classmethod
    def from_t5x(cls, directory: str | Path) -> MT3Model:
        """The model of a t5x checkpoint directory (MT3's released ``mt3`` and ``ismir2021``;
        see :mod:`musicgen.transcription.t5x_checkpoint`) through :func:`model_from_t5x`;
        a missing or malformed parameter is a :class:`UserError`."""
        params = read_t5x_checkpoint(directory)
        try:
            return model_from_t5x(params)
        except (KeyError, ValueError, IndexError, RuntimeError) as err:
            raise UserError(
                f"{directory} does not hold MT3's T5 parameters ({first_line(err)}): pass the "
                "directory of an MT3 t5x checkpoint (mt3 or ismir2021)"
            ) from None

    @torch.no_grad()
    def generate(
        self,
        frames: torch.Tensor,
        max_length: int = 1024,
        use_cache: bool = True,
        grammar: Granularity | GrammarSpec | None = None,
        with_log_probs: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Greedy transcription of log-mel frames ``(B, T, 512)``; see :meth:`greedy_decode`."""
        encoded = self.encoder(frames)
        return self.greedy_decode(encoded, max_length, use_cache, grammar, with_log_probs)

    @torch.no_grad()
    def greedy_decode(
        self,
        encoded: torch.Tensor,
        max_length: int = 1024,
        use_cache: bool = True,
        grammar: Granularity | GrammarSpec | None = None,
        with_log_probs: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(B, max_length)`` model ids decoded from encoder outputs, each row ending at its
        first EOS and PAD after it (or cut at ``max_length``). With ``grammar`` (the model's
        token format, :class:`GrammarSpec`, or for MT3's format the program granularity it was
        trained with) tokens its targets never hold are masked
        (:mod:`musicgen.transcription.grammar`); ``None`` is MT3's plain greedy. With
        ``with_log_probs``, also the model's log-probability of each decoded id ``(B,
        max_length)``, from its unmasked softmax (0 at PAD)."""
        batch = encoded.shape[0]
        tokens = torch.full((batch, 1), PAD_ID, dtype=torch.long, device=encoded.device)
        done = torch.zeros(batch, dtype=torch.bool, device=encoded.device)
        cache = self.decoder.init_cache(encoded, max_length) if use_cache else None
        state = None
        if grammar is not None:
            state = TokenGrammar(batch, self.config.vocab_size, grammar, encoded.device)
        scores = []
        for _ in range(max_length):
            if cache is not None:
                logits = self.decoder.step(tokens[:, -1], cache)
            else:
                logits = self.decoder(tokens, encoded)[:, -1]
            raw = logits
            if state is not None:
                logits = logits.masked_fill(~state.allowed(), float("-inf"))
            following = torch.where(done, PAD_ID, logits.argmax(-1))
            if with_log_probs:
                chosen = raw.log_softmax(-1).gather(-1, following[:, None])[:, 0]
                scores.append(chosen.masked_fill(done, 0.0))
            if state is not None:
                state.update(following)
            tokens = torch.cat([tokens, following[:, None]], dim=1)
            done |= following == EOS_ID
            if bool(done.all()):
                break
        padding = (0, max_length + 1 - tokens.shape[1])
        tokens = F.pad(tokens[:, 1:], padding, value=PAD_ID)
        if not with_log_probs:
            return tokens
        return tokens, F.pad(torch.stack(scores, dim=1), padding, value=0.0)


def t5x_name(torch_name: str) -> str:
    """The t5x parameter path (below ``target/``) of a torch parameter name."""
    parts = torch_name.split(".")
    leaf = parts.pop()
    path = []
    for part in parts:
        if part.isdigit():
            path[-1] = f"layers_{part}"
        else:
            path.append(part)
    if leaf == "weight":
        leaf = "embedding" if path[-1] == "token_embedder" else "kernel"
    return "/".join([*path, leaf])


def model_from_t5x(params: Mapping[str, np.ndarray], prefix: str = "target/") -> MT3Model:
    """An :class:`MT3Model` holding flattened t5x parameters (``prefix + t5x_name(name)``, e.g.
    ``target/encoder/layers_0/attention/query/kernel``); sizes are read from their shapes
    (heads of 64, as MT3); kernels are transposed."""

    def param(path: str) -> np.ndarray:
        if prefix + path not in params:
            raise KeyError(f"t5x parameters lack {prefix + path!r}")
        return np.asarray(params[prefix + path], dtype=np.float32)

    def count(stack: str) -> int:
        names = (k[len(prefix) :].split("/") for k in params if k.startswith(prefix + stack))
        return len({parts[1] for parts in names if parts[1].startswith("layers_")})

    vocab, d_model = param("decoder/token_embedder/embedding").shape
    cfg = MT3Config(
        vocab_size=vocab,
        input_depth=param("encoder/continuous_inputs_projection/kernel").shape[0],
        d_model=d_model,
        num_heads=param("encoder/layers_0/attention/query/kernel").shape[1] // 64,
        head_dim=64,
        d_ff=param("encoder/layers_0/mlp/wi_0/kernel").shape[1],
        num_encoder_layers=count("encoder/"),
        num_decoder_layers=count("decoder/"),
    )
    model = MT3Model(cfg)
    state = {}
    for name in model.state_dict():
        path = t5x_name(name)
        value = torch.from_numpy(param(path))
        state[name] = value.T.contiguous() if path.endswith("/kernel") else value
    model.load_state_dict(state)
    return model
