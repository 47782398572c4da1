"""Chunked SEANet inference in bounded memory, equal to whole-signal inference.

A SEANet encoder or decoder is a stack of convolutions around one LSTM. A convolution stack sees
a bounded window of its input, so a chunk run with that much context (on the left, and on the
right unless the model is causal) gives the outputs of the whole signal; the LSTM carries its
state from chunk to chunk. ``time_group_norm`` normalises over the whole signal, so models with
it cannot be chunked (the official 48 kHz model codes independent 1 s segments instead).

:class:`OverlapAdd` is the ``encodec`` package's ``_linear_overlap_add`` computed segment by
segment, with the same arithmetic in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from encodec.modules import SConv1d, SConvTranspose1d
from encodec.modules.lstm import SLSTM
from torch import nn


def receptive_field(layers: nn.Module) -> int:
    """An upper bound, in input steps, of how far one output of ``layers`` looks on either side."""
    span, step = 0.0, 1.0  # ``step``: input steps per step at the current layer
    for module in layers.modules():
        if isinstance(module, SConv1d):
            conv = module.conv.conv
            span += ((conv.kernel_size[0] - 1) * conv.dilation[0] + 1) * step
            step *= conv.stride[0]
        elif isinstance(module, SConvTranspose1d):
            convtr = module.convtr.convtr
            span += math.ceil(convtr.kernel_size[0] / convtr.stride[0]) * step
            step /= convtr.stride[0]
    return math.ceil(span) + 1


class ConvStage:
    """Streams a convolution stack whose output step is ``down`` input steps (or ``1 / up``).

    Pushed chunks must be multiples of ``down`` except the last; the stage keeps ``left`` input
    steps of context and, unless causal, holds back outputs until ``right`` steps follow them.
    Windows are never shorter than the receptive field, so reflect padding at the signal's start
    sees the samples it sees in the whole signal.
    """

    def __init__(self, layers: nn.Module, causal: bool, down: int = 1, up: int = 1) -> None:
        self.layers, self.down, self.up = layers, down, up
        self.left = math.ceil(receptive_field(layers) / down) * down
        self.right = 0 if causal else self.left
        self.buffer: torch.Tensor | None = None
        self.start = 0  # input index of buffer[..., 0]
        self.done = 0  # inputs whose outputs were returned

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        """Outputs that ``x`` completes (all remaining ones when ``final``), or None."""
        if x is not None:
            self.buffer = x if self.buffer is None else torch.cat([self.buffer, x], dim=-1)
        if self.buffer is None:
            return None
        end = self.start + self.buffer.shape[-1]
        upto = end if final else (end - self.right) // self.down * self.down
        if upto <= self.done or (
            not final and end - self.start < self.left + self.right + self.down
        ):
            return None  # a shorter window would pad differently from the whole signal
        out = self.layers(self.buffer)
        lo = (self.done - self.start) * self.up // self.down
        hi = -(-(upto - self.start) * self.up // self.down)
        self.done = upto
        keep_from = max(self.start, upto - self.left)
        self.buffer = self.buffer[..., keep_from - self.start :]
        self.start = keep_from
        return out[..., lo:hi]


class LSTMStage:
    """The encodec ``SLSTM`` (LSTM plus skip connection) with its state carried across chunks."""

    def __init__(self, module: SLSTM) -> None:
        self.module = module
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        if x is None:
            return None
        steps = x.permute(2, 0, 1)
        y, self.state = self.module.lstm(steps, self.state)
        if self.module.skip:
            y = y + steps
        return y.permute(1, 2, 0)


Stage = ConvStage | LSTMStage


def stages(model: nn.Module, causal: bool, down: int = 1, up: int = 1) -> list[Stage]:
    """Streaming stages of a SEANet encoder (``down`` = hop) or decoder (``up`` = hop)."""
    layers = list(model.model)
    split = next((i for i, m in enumerate(layers) if isinstance(m, SLSTM)), None)
    if split is None:
        return [ConvStage(model.model, causal, down, up)]
    before, after = nn.Sequential(*layers[:split]), nn.Sequential(*layers[split + 1 :])
    return [
        ConvStage(before, causal, down=down),
        LSTMStage(layers[split]),
        ConvStage(after, causal, up=up),
    ]


def run(stack: list[Stage], chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Push ``chunks`` through ``stack``; yields the outputs as soon as they are final."""
    for chunk in chunks:
        out: torch.Tensor | None = chunk
        for stage in stack:
            out = stage.push(out, final=False)
        if out is not None and out.shape[-1]:
            yield out
    out = None
    for stage in stack:
        out = stage.push(out, final=True)
    if out is not None and out.shape[-1]:
        yield out


class OverlapAdd:
    """``encodec.utils._linear_overlap_add`` of frames pushed one by one, ``stride`` apart."""

    def __init__(self, stride: int) -> None:
        self.stride = stride
        self.weight: torch.Tensor | None = None
        self.out: torch.Tensor | None = None  # weighted sum from ``start`` on
        self.total: torch.Tensor | None = None  # sum of weights from ``start`` on
        self.start = 0  # index of out[..., 0]
        self.offset = 0  # where the next frame starts

    def push(self, frame: torch.Tensor) -> torch.Tensor:
        """Add ``frame`` (..., T); returns the samples no later frame can reach."""
        length = frame.shape[-1]
        if self.weight is None:
            t = torch.linspace(0, 1, length + 2, device=frame.device, dtype=frame.dtype)[1:-1]
            self.weight = 0.5 - (t - 0.5).abs()
            self.out = frame.new_zeros(*frame.shape[:-1], 0)
            self.total = frame.new_zeros(0)
        grow = self.offset + length - self.start - self.out.shape[-1]
        if grow > 0:
            self.out = torch.cat([self.out, self.out.new_zeros(*self.out.shape[:-1], grow)], -1)
            self.total = torch.cat([self.total, self.total.new_zeros(grow)])
        at = self.offset - self.start
        self.out[..., at : at + length] += self.weight[:length] * frame
        self.total[at : at + length] += self.weight[:length]
        self.offset += self.stride
        return self._take(min(self.offset - self.start, self.out.shape[-1]))

    def flush(self) -> torch.Tensor:
        """The remaining samples, after the last frame."""
        return self._take(self.out.shape[-1])

    def _take(self, count: int) -> torch.Tensor:
        done = self.out[..., :count] / self.total[:count]
        self.out, self.total = self.out[..., count:], self.total[count:]
        self.start += count
        return done
