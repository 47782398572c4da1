"""Frame-level auxiliary targets of MT3 training (``solver.module.frame_loss``)."""

from __future__ import annotations

import numpy as np
import torch

from musicgen.notes import crop_notes
from solvers.frame_targets import NUM_OUTPUTS, NUM_PITCHES, FrameHead, frame_targets

SOUND, CLASS = NUM_PITCHES, 2 * NUM_PITCHES
# start, end, pitch, velocity, program, is_drum, tied_start, tied_end (8 ms frames: 125/s)
NOTES = np.asarray(
    [
        [0.10, 0.50, 60, 90, 41, 0, 0, 0],  # violin (class 5): onset frame 12, sounds 12..62
        [0.00, 0.30, 62, 90, 0, 0, 1, 0],  # tied in from the previous crop: sounds, no onset
        [1.00, 1.10, 36, 100, 0, 1, 0, 0],  # kick: onset only, class 16
    ]
)


def test_onsets_mark_two_frames_and_tied_notes_have_none() -> None:
    rolls = frame_targets(NOTES, 256)
    assert rolls.shape == (256, NUM_OUTPUTS)
    onset_frames, onset_pitches = np.nonzero(rolls[:, :NUM_PITCHES])
    assert onset_frames.tolist() == [12, 13, 125, 126] and onset_pitches.tolist() == [
        60,
        60,
        36,
        36,
    ]
    class_frames, classes = np.nonzero(rolls[:, CLASS:])
    assert class_frames.tolist() == [12, 13, 125, 126] and classes.tolist() == [5, 5, 16, 16]


def test_sound_roll_covers_pitched_notes_only() -> None:
    rolls = frame_targets(NOTES, 256)
    sounding = rolls[:, SOUND:CLASS]
    assert np.nonzero(sounding[:, 60])[0].tolist() == list(range(12, 63))  # 0.1 s .. 0.5 s
    assert np.nonzero(sounding[:, 62])[0].tolist() == list(range(0, 38))  # 0 .. 0.3 s
    assert sounding[:, 36].sum() == 0  # drums are onset events


def test_targets_of_a_crop_are_clipped_to_it() -> None:
    crop = crop_notes(NOTES, 0.2, 0.9)  # 87.5 frames
    rolls = frame_targets(crop, 88)
    assert (
        rolls[:, :NUM_PITCHES].sum() == 0
    )  # the violin started before the crop, the kick after it
    assert np.nonzero(rolls[:, SOUND + 60])[0].tolist() == list(range(0, 38))
    assert np.nonzero(rolls[:, SOUND + 62])[0].tolist() == list(range(0, 13))
    assert frame_targets(crop[:0], 10).sum() == 0


def test_head_loss_is_summed_bce_over_outputs() -> None:
    torch.manual_seed(0)
    head = FrameHead(8)
    encoded = torch.randn(2, 5, 8)
    targets = torch.from_numpy(np.stack([frame_targets(NOTES, 5)] * 2))
    logits = head.proj(encoded)
    p = torch.sigmoid(logits)
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum(-1).mean()
    assert torch.allclose(head.loss(encoded, targets), expected, atol=1e-4)
