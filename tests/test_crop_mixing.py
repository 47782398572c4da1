"""Mixing augmentation of MT3 training crops (``solver.module.mix_probability``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicgen.notes import window_notes
from musicgen.transcription import NoteDecoder, crop_tokens
from solvers.crop_mixing import mix_crops, mix_partners
from solvers.transcription import MT3Solver

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

SECONDS = 2.048
# (start, end, pitch, velocity, program, is_drum, tied_start, tied_end), track time; times stay
# 3 ms off the 10 ms grid so that moving them by a whole number of steps rounds the same way
TRACK_A = np.asarray(
    [
        [0.903, 1.503, 60, 100, 0, 0, 0, 0],  # sounds into crop A (starts before it)
        [1.443, 2.213, 64, 100, 40, 0, 0, 0],
        [2.503, 4.003, 60, 100, 0, 0, 0, 0],  # same pitch and program as B's note at 2.403
        [1.803, 1.853, 38, 100, 0, 1, 0, 0],
    ]
)
TRACK_B = np.asarray(
    [
        [5.313, 5.613, 67, 100, 73, 0, 0, 0],
        [6.203, 6.903, 60, 100, 0, 0, 0, 0],
        [6.503, 6.553, 42, 100, 0, 1, 0, 0],
    ]
)
START_A, START_B = 1.2, 5.0  # B's notes land 3.8 s earlier in A's crop


def crop(track: np.ndarray, start: float) -> torch.Tensor:
    return torch.from_numpy(window_notes(track, start, start + SECONDS, lead=0.02))


def decoded(tokens: np.ndarray, start: float) -> set[tuple]:
    """(onset step, pitch, program, is_drum) of the notes a crop's target starts."""
    decoder = NoteDecoder()
    decoder.decode_segment(tokens.tolist(), start, start + SECONDS)
    notes = decoder.finish(start + SECONDS)
    return {(round((n[0] - start) * 100), int(n[2]), int(n[4]), int(n[5])) for n in notes}


def test_partners_are_other_crops_drawn_with_the_probability() -> None:
    generator = torch.Generator().manual_seed(0)
    assert mix_partners(8, 0.0, generator) == [-1] * 8
    assert mix_partners(1, 1.0, generator) == [-1]
    draws = [mix_partners(4, 1.0, generator) for _ in range(200)]
    assert all(j != i and 0 <= j < 4 for row in draws for i, j in enumerate(row))
    assert {j for row in draws for j in row} == {0, 1, 2, 3}
    mixed = sum(j >= 0 for _ in range(500) for j in mix_partners(4, 0.3, generator))
    assert 0.25 < mixed / 2000 < 0.35


def test_a_mixed_crop_is_the_sum_of_both_and_its_target_has_both_crops_notes() -> None:
    notes = [crop(TRACK_A, START_A), crop(TRACK_B, START_B)]
    starts = torch.tensor([START_A, START_B], dtype=torch.float64)
    audio = torch.randn(2, 32768)
    before = [n.clone() for n in notes]
    mixed_audio, mixed_notes = mix_crops(audio, notes, starts, [1, -1])
    assert torch.equal(mixed_audio[0], audio[0] + audio[1])
    assert torch.equal(mixed_audio[1], audio[1]) and torch.equal(mixed_notes[1], notes[1])
    assert all(torch.equal(a, b) for a, b in zip(notes, before, strict=True))  # inputs kept
    target = crop_tokens(mixed_notes[0].numpy(), START_A, START_A + SECONDS)
    own = [
        crop_tokens(n.numpy(), s, s + SECONDS)
        for n, s in zip(notes, (START_A, START_B), strict=True)
    ]
    union = decoded(own[0], START_A) | decoded(own[1], START_B)
    assert decoded(target, START_A) == union
    # A's onsets of pitches 64 and 60 and its drum hit, B's pitches 67 and 60 and drum hit (A's
    # note sounding from before its crop is in the tie section, not an onset)
    assert len(union) == 6


def test_mixing_trims_a_note_that_the_partner_restarts() -> None:
    # B's pitch 60 (program 0), 6.203-6.903 s, lands at 2.403-3.103 s in A's crop, where A's
    # pitch 60 starts at 2.503 s: the union's same-pitch notes must not overlap
    notes = [crop(TRACK_A, START_A), crop(TRACK_B, START_B)]
    starts = torch.tensor([START_A, START_B], dtype=torch.float64)
    _, mixed = mix_crops(torch.zeros(2, 4), notes, starts, [1, 0])
    for merged in mixed:
        same = merged[(merged[:, 2] == 60) & (merged[:, 5] == 0)].numpy()
        same = same[np.argsort(same[:, 0])]
        assert (same[1:, 0] >= same[:-1, 1] - 1e-12).all()


def test_solver_trains_on_mixed_crops() -> None:
    optim = {"name": "adamw", "lr": 1e-3, "adamw": {"betas": [0.9, 0.98]}}
    tiny = {"d_model": 32, "num_heads": 2, "head_dim": 16, "d_ff": 64}
    tiny |= {"num_encoder_layers": 1, "num_decoder_layers": 1, "dropout": 0.0}
    torch.manual_seed(0)
    plain = MT3Solver(model=tiny, optim=optim)
    torch.manual_seed(0)
    mixing = MT3Solver(model=tiny, optim=optim, mix_probability=1.0)
    batch = {
        "audio": torch.randn(2, 1, 32768) * 0.1,
        "notes": [crop(TRACK_A, START_A), crop(TRACK_B, START_B)],
        "start": torch.tensor([START_A, START_B], dtype=torch.float64),
    }
    loss = mixing.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and loss != plain.training_step(batch, 0)
