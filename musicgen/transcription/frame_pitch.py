"""Not MT3: the encoder frame at the current time, read by the pitch logits or the decoder's input.

After a ``shift`` token, MT3's decoder names the pitches that start (or end) at that time; it
has to find the frame of that time through cross-attention first. With
``MT3Config.pitch_from_frame`` the pitch logits also get a linear read-out of the encoder output
at the frame whose window is centred on the time of the latest ``shift`` in the decoder's input
(:func:`~musicgen.transcription.time_pointer.shift_frames`, interpolated between frames and
clamped to the segment; time 0 before any shift). With ``MT3Config.frame_input`` a projection
of that frame is added to the decoder's input instead, so every decoder layer sees it. Both
start at zero, so an untrained model's logits are exactly those without them.
"""

from __future__ import annotations

import torch
from torch import nn

from musicgen.transcription.time_pointer import frame_neighbours, shift_frames
from musicgen.transcription.vocabulary import MAX_SHIFT_STEPS, token

NUM_PITCHES = 128


def current_steps(tokens: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
    """The time (10 ms steps from the segment start) in force at each position of decoder inputs
    ``(B, L)``: the value of the latest ``shift`` token up to and including it, else ``previous``
    ``(B,)`` (the time before these tokens; 0 when ``None``). Shifts hold absolute times; a run
    of several (times past 10 s) never occurs in a segment of at most 4.096 s, and the decoder
    drops whatever follows a shift past the segment's end."""
    first = token("shift", 0)
    is_shift = (tokens >= first) & (tokens <= first + MAX_SHIFT_STEPS)
    before = torch.zeros_like(tokens[:, :1]) if previous is None else previous[:, None]
    values = torch.cat([before, tokens - first], dim=1)
    positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device).expand_as(tokens)
    latest = torch.where(is_shift, positions, 0)
    latest = torch.cat([torch.zeros_like(before), latest], dim=1).cummax(dim=1).values[:, 1:]
    return values.gather(1, latest)


def frames_at_steps(encoded: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Encoder output ``(B, T, d_model)`` at the frames of times ``steps`` ``(B, L)`` (10 ms
    steps): the frame whose window is centred on each time, interpolated between frames and
    clamped to the segment; ``(B, L, d_model)``."""
    lower, upper, weight = frame_neighbours(shift_frames(steps), encoded.shape[1])
    weight = weight.to(encoded.dtype)[..., None]

    def at(index: torch.Tensor) -> torch.Tensor:
        return encoded.gather(1, index[..., None].expand(-1, -1, encoded.shape[-1]))

    return at(lower) * (1 - weight) + at(upper) * weight


class FrameInput(nn.Module):
    """A projection of the encoder frame at the current time, added to the decoder's input."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.projection = nn.Linear(d_model, d_model, bias=False)

    def forward(self, encoded: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """``(B, L, d_model)`` for ``encoded`` ``(B, T, d_model)`` and times ``steps`` ``(B, L)``."""
        return self.projection(frames_at_steps(encoded, steps))


class FramePitchHead(nn.Module):
    """Adds ``readout(encoder output at the current time's frame)`` to the pitch logits."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.readout = nn.Linear(d_model, NUM_PITCHES, bias=False)
        self.first = token("pitch", 0)

    def forward(
        self,
        logits: torch.Tensor,
        encoded: torch.Tensor,
        steps: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``logits`` ``(B, L, vocab)`` (float, changed in place) with the read-out of
        ``encoded`` ``(B, T, d_model)`` at the frames of ``steps`` ``(B, L)`` added to the
        pitch ids. With ``keep`` (``(B, L)`` bool), ``logits`` are ``(N, vocab)``: those
        positions only."""
        states = frames_at_steps(encoded, steps)
        if keep is not None:
            states = states[keep]
        logits[..., self.first : self.first + NUM_PITCHES] += self.readout(states).to(logits.dtype)
        return logits
