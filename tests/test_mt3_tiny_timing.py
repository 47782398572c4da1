"""Timing in the MT3 solver: where ``shift_position_init`` points shift tokens, and
``timing_loss_weight``."""

from __future__ import annotations

import torch

from musicgen.transcription import EOS_ID, PAD_ID, token
from musicgen.transcription.frontend import LogMelFrontend
from musicgen.transcription.model import MT3Config, MT3Model
from musicgen.transcription.segments import SAMPLE_RATE, SEGMENT_SAMPLES
from musicgen.transcription.time_pointer import shift_frames
from solvers.transcription import MT3Solver, init_shifts_from_positions

ONSET_STEP = 100  # 1.00 s into a 2.048 s segment


def onset_frame() -> int:
    """The frame of the log-mel front end where a tone starting at 1.00 s rises fastest
    (largest increase of the magnitude in the mel bin of its fundamental)."""
    t = torch.arange(SEGMENT_SAMPLES, dtype=torch.float64) / SAMPLE_RATE
    tone = sum(torch.sin(2 * torch.pi * 220 * h * t) / h for h in range(1, 6))
    audio = torch.where(t >= ONSET_STEP / 100, tone, 0.0).float()
    magnitude = LogMelFrontend()(audio[None])[0].exp()
    fundamental = magnitude[-1].argmax()
    return int(magnitude[:, fundamental].diff().argmax()) + 1


def test_shift_init_points_at_the_frame_where_an_onset_shows() -> None:
    """Before the fix, shift k started at frame 1.25 k, whose window *starts* at its time and
    sees no change: a trained tiny model then placed onsets ~60 ms early."""
    assert abs(onset_frame() - 117) <= 1  # mid-window: (16000 - 1024) / 128
    torch.manual_seed(0)
    model = MT3Model(MT3Config(d_model=64, num_heads=2, head_dim=16, d_ff=64))
    init_shifts_from_positions(model)
    positions = model.encoder.positions[:256]
    for table in (model.decoder.logits_dense.weight, model.decoder.token_embedder.weight):
        nearest = int((positions @ table[token("shift", ONSET_STEP)]).argmax())
        assert abs(nearest - onset_frame()) <= 1


def test_shift_frames_are_window_centres() -> None:
    frames = shift_frames(torch.tensor([0, 8, 100, 1000]))
    assert frames.tolist() == [-8.0, 2.0, 117.0, 1242.0]


def test_timing_loss_weight_weighs_shift_and_eos_targets() -> None:
    torch.manual_seed(0)
    tiny = {"d_model": 32, "num_heads": 2, "head_dim": 16, "d_ff": 64, "dropout": 0.0}
    tiny |= {"num_encoder_layers": 1, "num_decoder_layers": 1}
    solver = MT3Solver(model=tiny, optim={"name": "adamw", "lr": 1e-3}, z_loss=0.0)
    frames = torch.randn(2, 256, 512)
    pitch, shift = token("pitch", 60), token("shift", 10)
    targets = torch.tensor([[pitch, shift, pitch, EOS_ID], [shift, EOS_ID, PAD_ID, PAD_ID]])
    inputs = torch.nn.functional.pad(targets[:, :-1], (1, 0), value=PAD_ID)
    logits = solver.model(frames, inputs)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    timing = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]], dtype=torch.bool)
    real = targets != PAD_ID
    plain = nll[real].mean()
    weighted = (3 * nll[timing].sum() + nll[real & ~timing].sum()) / (3 * 4 + 2)
    torch.testing.assert_close(solver._loss(frames, targets)[0], plain)
    torch.testing.assert_close(solver._loss(frames, targets, timing_weight=3.0)[0], weighted)
