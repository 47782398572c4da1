"""The delay pattern: exact build/revert, layout length and loss mask against a direct loop."""

from __future__ import annotations

import pytest
import torch

from musicgen.lm import DelayPattern

SPECIAL = 99


def loop_build(codes: torch.Tensor, delays: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The layout written out position by position."""
    batch, n_q, frames = codes.shape
    steps = frames + max(delays) + 1
    seq = torch.full((batch, n_q, steps), SPECIAL, dtype=codes.dtype)
    mask = torch.zeros(n_q, steps, dtype=torch.bool)
    for k, delay in enumerate(delays):
        for t in range(frames):
            seq[:, k, t + 1 + delay] = codes[:, k, t]
            mask[k, t + 1 + delay] = True
    return seq, mask


CASES = [
    (1, None, 5),
    (2, None, 1),
    (4, None, 13),
    (4, [0, 1, 2, 3], 3),
    (5, None, 8),
    (4, [0, 2, 2, 5], 7),
    (3, [3, 0, 1], 4),
    (2, [0, 0], 6),
]


@pytest.mark.parametrize(("n_q", "delays", "frames"), CASES)
def test_build_matches_loop_and_reverts_exactly(n_q: int, delays: list[int] | None, frames: int):
    pattern = DelayPattern(n_q, delays)
    effective = list(range(n_q)) if delays is None else delays
    codes = torch.randint(0, SPECIAL, (3, n_q, frames))
    seq, mask = pattern.build(codes, SPECIAL)
    expected_seq, expected_mask = loop_build(codes, effective)
    assert seq.shape == (3, n_q, frames + max(effective) + 1)
    assert pattern.num_steps(frames) == seq.shape[2]
    assert torch.equal(seq, expected_seq)
    assert torch.equal(mask, expected_mask)
    assert torch.equal(pattern.step_mask(frames), expected_mask)
    assert not mask[:, 0].any()  # the start step is all special
    assert (seq[:, ~mask] == SPECIAL).all()
    reverted, valid = pattern.revert(seq, SPECIAL)
    assert torch.equal(reverted, codes)
    assert valid.all() and valid.shape == (n_q, frames)


def test_loss_mask_counts_exactly_the_frames():
    pattern = DelayPattern(4)
    _, mask = pattern.build(torch.zeros(1, 4, 10, dtype=torch.long), SPECIAL)
    assert mask.sum(1).tolist() == [10, 10, 10, 10]
    assert mask.shape == (4, 14)


def test_revert_of_a_partial_sequence_marks_missing_positions():
    pattern = DelayPattern(3)
    codes = torch.randint(0, SPECIAL, (2, 3, 6))
    seq, _ = pattern.build(codes, SPECIAL)
    cut = seq[:, :, :6]  # frames 0..2 complete, later frames only in the first codebooks
    reverted, valid = pattern.revert(cut, SPECIAL, num_frames=5)
    expected_valid = torch.tensor([[t + 1 + k < 6 for t in range(5)] for k in range(3)])
    assert torch.equal(valid, expected_valid)
    assert torch.equal(reverted[:, valid], codes[:, :, :5][:, valid])
    assert (reverted[:, ~valid] == SPECIAL).all()
    full, full_valid = pattern.revert(cut, SPECIAL)
    assert full.shape == (2, 3, 3) and full_valid.all()
    assert torch.equal(full, codes[:, :, :3])


def test_empty_sequence():
    pattern = DelayPattern(4)
    seq, mask = pattern.build(torch.zeros(2, 4, 0, dtype=torch.long), SPECIAL)
    assert seq.shape == (2, 4, 4) and (seq == SPECIAL).all() and not mask.any()
    assert pattern.revert(seq, SPECIAL)[0].shape == (2, 4, 0)


@pytest.mark.parametrize(
    ("n_q", "delays", "message"),
    [(0, None, "n_q"), (3, [0, 1], "one entry"), (2, [0, -1], ">= 0")],
)
def test_bad_pattern_arguments(n_q: int, delays: list[int] | None, message: str):
    with pytest.raises(ValueError, match=message):
        DelayPattern(n_q, delays)


def test_wrong_number_of_codebooks():
    with pytest.raises(ValueError, match=r"\(B, 4, T\)"):
        DelayPattern(4).build(torch.zeros(1, 3, 5, dtype=torch.long), SPECIAL)
