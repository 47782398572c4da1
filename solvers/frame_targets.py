"""Frame-level auxiliary targets for MT3 training (a training aid; the model is unchanged).

Learning *when* notes start is what a small MT3 learns slowest: its decoder must discover
which encoder frame each ``shift`` token points at. As CTC does for attention-based speech
recognisers, a per-frame loss on the encoder output makes the encoder mark onsets at the
frames where they happen, so the cross-attention has something to find. The head reads the
encoder output of each 8 ms frame and predicts, as independent sigmoids: the pitches with an
onset in that frame (drums included), the pitched notes sounding in it, and the MIDI classes
(program // 8, drums as a 17th) with an onset in it. It is dropped after training: checkpoints
keep it under ``frame_head.`` beside ``model.``, which the transcriber ignores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from musicgen.notes import END, IS_DRUM, PITCH, PROGRAM, START, TIED_START
from musicgen.transcription.segments import HOP_LENGTH, SAMPLE_RATE

NUM_PITCHES = 128
NUM_CLASSES = 17  # 16 MIDI program classes + drums
NUM_OUTPUTS = 2 * NUM_PITCHES + NUM_CLASSES
ONSET_FRAMES = 2  # an onset marks its frame and the next (16 ms)
PRIOR_LOGIT = -4.0  # initial bias: targets are sparse (p ~ 0.02)


def frame_targets(notes: np.ndarray, num_frames: int) -> np.ndarray:
    """``(num_frames, NUM_OUTPUTS)`` 0/1 targets of a crop whose notes are in crop time
    (seconds from the crop's first sample, as :func:`musicgen.notes.crop_notes` leaves them):
    onset roll, sound roll, class-onset roll. Notes tied in from before the crop sound but
    have no onset."""
    out = np.zeros((num_frames, NUM_OUTPUTS), dtype=np.float32)
    if not len(notes):
        return out
    frames_per_second = SAMPLE_RATE / HOP_LENGTH
    first = np.floor(notes[:, START] * frames_per_second).astype(np.int64)
    last = np.ceil(notes[:, END] * frames_per_second).astype(np.int64)
    pitch = notes[:, PITCH].astype(np.int64)
    drum = notes[:, IS_DRUM] > 0
    klass = np.where(drum, NUM_CLASSES - 1, notes[:, PROGRAM].astype(np.int64) // 8)
    for offset in range(ONSET_FRAMES):
        frame = first + offset
        inside = (frame >= 0) & (frame < num_frames) & (notes[:, TIED_START] == 0)
        out[frame[inside], pitch[inside]] = 1.0
        out[frame[inside], 2 * NUM_PITCHES + klass[inside]] = 1.0
    for a, b, p in zip(first[~drum], last[~drum], pitch[~drum], strict=True):
        out[max(a, 0) : min(b, num_frames), NUM_PITCHES + p] = 1.0
    return out


class FrameHead(nn.Module):
    """Linear read-out of the encoder output: ``(B, T, d_model)`` -> ``(B, T, NUM_OUTPUTS)``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, NUM_OUTPUTS)
        nn.init.constant_(self.proj.bias, PRIOR_LOGIT)

    def loss(self, encoded: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy summed over outputs, averaged over frames."""
        logits = self.proj(encoded).float()
        bce = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return bce.sum(-1).mean()
