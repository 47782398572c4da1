"""Not MT3: a pointer from the decoder to the input frames for ``shift`` tokens (small models).

A ``shift`` token names a time in its segment (10 ms steps). MT3 scores it like every other
token, from the decoder state alone, so a model must first carry the time of the next onset
through cross-attention into that state. With ``MT3Config.time_pointer`` each shift's logit
also gets a scaled dot product between a query from the decoder state and a key from the
encoder output at the frame whose analysis window is centred on the shift's time
(:func:`shift_frames`; linear interpolation between frames, clamped to the segment): a time
can be read off the frames where an onset shows. The query starts at zero, so an untrained
model's logits are exactly those without the pointer.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from musicgen.transcription.frontend import FFT_SIZE
from musicgen.transcription.segments import HOP_LENGTH, SAMPLE_RATE
from musicgen.transcription.vocabulary import MAX_SHIFT_STEPS, STEPS_PER_SECOND, token


def shift_frames(steps: torch.Tensor) -> torch.Tensor:
    """The (fractional) input frame whose analysis window is centred on the time of a shift of
    ``steps`` 10 ms steps: frame ``f`` is the STFT of the 2048 samples from ``f * 128`` on, so
    audio at ``t`` s sits mid-window in frame ``(t * 16000 - 1024) / 128`` (``1.25 k - 8``);
    the first 60 ms fall before frame 0 (negative)."""
    samples = steps.to(torch.float64) * SAMPLE_RATE / STEPS_PER_SECOND
    return (samples - FFT_SIZE / 2) / HOP_LENGTH


def frame_neighbours(
    frames: torch.Tensor, num_frames: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear interpolation at fractional ``frames`` clamped to ``[0, num_frames - 1]``: the
    lower and upper frame indices and the upper one's weight."""
    frames = frames.clamp(0, num_frames - 1)
    lower = frames.floor().long()
    return lower, (lower + 1).clamp(max=num_frames - 1), frames - lower


class TimePointer(nn.Module):
    """Adds ``query(state) . key(frame of the shift) / sqrt(d_model)`` to each shift logit."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.first, self.last = token("shift", 0), token("shift", MAX_SHIFT_STEPS)
        frames = shift_frames(torch.arange(MAX_SHIFT_STEPS + 1)).to(torch.float32)
        self.register_buffer("frames", frames, persistent=False)
        self._frame_list = frames.tolist()  # for counting on the host (no device sync per step)

    def keys(self, encoded: torch.Tensor) -> torch.Tensor:
        """Keys ``(B, T, d_model)`` of the encoder output ``(B, T, d_model)``."""
        return self.key(encoded)

    def forward(
        self,
        logits: torch.Tensor,
        states: torch.Tensor,
        keys: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``logits`` ``(B, L, vocab)`` (float, changed in place) with the pointer scores of
        decoder ``states`` ``(B, L, d_model)`` over ``keys`` ``(B, T, d_model)`` added to the
        shift ids. Shifts whose frame is at or past the last frame all get its score. With
        ``keep`` (``(B, L)`` bool), ``logits`` are ``(N, vocab)``: those positions only."""
        num_frames = keys.shape[1]
        scores = self.query(states) @ keys.transpose(1, 2) / math.sqrt(keys.shape[-1])
        if keep is not None:
            scores = scores[keep]
        inside = bisect.bisect_left(self._frame_list, num_frames - 1)  # frames grow with the shift
        lower, upper, weight = frame_neighbours(self.frames[:inside], num_frames)
        weight = weight.to(scores.dtype)
        pointed = scores[..., lower] * (1 - weight) + scores[..., upper] * weight
        first, split = self.first, self.first + inside
        logits[..., first:split] += pointed.to(logits.dtype)
        logits[..., split : self.last + 1] += scores[..., -1:].to(logits.dtype)
        return logits
