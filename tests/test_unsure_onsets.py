"""Leaving out unsure onsets (``min_onset_probability``, not MT3): greedy decoding's token
log-probabilities, the note decoding that drops onsets below the threshold as if their tokens
were absent, ``transcribe_track``, the solver option and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from musicgen import transcribe as cli
from musicgen.notes import PITCH, START
from musicgen.transcription.frontend import LogMelFrontend
from musicgen.transcription.model import MT3Model
from musicgen.transcription.segments import (
    notes_to_segment_tokens,
    segment_origin_times,
    stitch_segments,
)
from musicgen.transcription.transcriber import MODEL_TYPES, Transcriber, transcribe_track
from musicgen.transcription.vocabulary import EOS_ID, PAD_ID, token
from tests.test_transcription_grammar import TINY

SURE, UNSURE = math.log(0.9), math.log(0.05)


def decode(events: list[tuple[int, float]], threshold: float) -> tuple[np.ndarray, int, int]:
    """Notes, invalid and unsure counts of one segment at origin 0 of ``(id, probability)``."""
    ids = [i for i, _ in events] + [EOS_ID]
    log_probs = [math.log(p) for _, p in events] + [0.0]
    decoded = stitch_segments([ids], [0.0], log_probs=[log_probs], min_onset_probability=threshold)
    return decoded.notes[:, [START, 1, PITCH]], decoded.invalid, decoded.unsure


def test_an_unsure_onset_is_left_out_and_a_sounding_note_carries_on() -> None:
    events = [
        (token("tie", 0), 0.9),
        (token("shift", 10), 0.9),
        (token("velocity", 1), 0.9),
        (token("pitch", 60), 0.9),
        (token("shift", 20), 0.9),
        (token("pitch", 62), 0.05),  # unsure: left out
        (token("shift", 30), 0.9),
        (token("pitch", 60), 0.05),  # an unsure repeat: the note from 0.1 s carries on
        (token("shift", 40), 0.9),
        (token("velocity", 0), 0.05),
        (token("pitch", 62), 0.9),  # the left-out note's note-off: consumed, not invalid
        (token("pitch", 60), 0.02),  # a note-off is never left out, whatever its probability
    ]
    notes, invalid, unsure = decode(events, 0.1)
    np.testing.assert_allclose(notes, [[0.1, 0.4, 60]])
    assert (invalid, unsure) == (0, 2)
    notes, invalid, unsure = decode(events, 0.0)  # MT3's decoding: every onset
    np.testing.assert_allclose(notes, [[0.1, 0.3, 60], [0.2, 0.4, 62], [0.3, 0.4, 60]])
    assert (invalid, unsure) == (0, 0)


def onset_positions(ids: np.ndarray) -> list[int]:
    """Indices of the note onsets of one segment (pitch tokens after velocity > 0, after the
    tie section), re-derived in plain Python."""
    found, in_tie, on = [], True, True
    for i, t in enumerate(ids.tolist()):
        if t == EOS_ID:
            break
        if t == token("tie", 0):
            in_tie = False
        elif token("velocity", 0) <= t <= token("velocity", 1):
            on = t == token("velocity", 1)
        elif token("pitch", 0) <= t <= token("pitch", 127) and on and not in_tie:
            found.append(i)
    return found


@pytest.mark.parametrize("seed", range(10))
def test_equals_decoding_without_the_unsure_tokens(seed: int) -> None:
    """On real targets of random notes over several segments, with random probabilities, the
    notes equal those of the token sequences with each unsure onset token replaced by a no-op
    (``velocity 1``, the velocity in force: deleting it could join two shifts into one)."""
    rng = np.random.default_rng(seed)
    count = 40
    start = rng.uniform(0, 8, count)
    notes = np.zeros((count, 8))
    notes[:, START], notes[:, 1] = start, start + rng.uniform(0.05, 1.5, count)
    notes[:, PITCH] = rng.integers(55, 62, count)  # few pitches: repeats and overlaps
    notes[:, 3], notes[:, 4] = 100, rng.choice([0, 33], count)
    segments = notes_to_segment_tokens(notes, 5)
    origins = segment_origin_times(5)
    log_probs = [np.log(rng.uniform(0.01, 1, len(ids))) for ids in segments]
    unsure = [
        [i for i in onset_positions(ids) if lp[i] < math.log(0.3)]
        for ids, lp in zip(segments, log_probs, strict=True)
    ]
    kept = [ids.copy() for ids in segments]
    for ids, positions in zip(kept, unsure, strict=True):
        ids[positions] = token("velocity", 1)
    ours = stitch_segments(segments, origins, log_probs=log_probs, min_onset_probability=0.3)
    removed = stitch_segments(kept, origins)
    np.testing.assert_array_equal(ours.notes, removed.notes)
    assert ours.unsure == sum(map(len, unsure)) > 0
    assert ours.invalid == 0  # the left-out notes' note-offs and ties are not invalid


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_log_probs_are_the_models_at_each_decoded_token(use_cache: bool) -> None:
    torch.manual_seed(0)
    model = MT3Model(TINY).eval()
    encoded = model.encoder(torch.randn(3, 256, 512))
    spec = MODEL_TYPES["mt3"].grammar("full")
    plain = model.greedy_decode(encoded, 40, use_cache, spec)
    tokens, log_probs = model.greedy_decode(encoded, 40, use_cache, spec, with_log_probs=True)
    assert torch.equal(tokens, plain) and log_probs.shape == tokens.shape
    inputs = F.pad(tokens[:, :-1], (1, 0), value=PAD_ID)
    with torch.no_grad():
        forced = model.decoder(inputs, encoded).log_softmax(-1)
    expected = forced.gather(-1, tokens[..., None])[..., 0]
    real = torch.cat([torch.ones_like(tokens[:, :1]), tokens[:, :-1] != EOS_ID], 1).cumprod(1)
    real = real.bool() & (tokens != PAD_ID)
    torch.testing.assert_close(log_probs[real], expected[real], atol=1e-4, rtol=1e-4)
    assert torch.all(log_probs[~real] == 0)


class ScriptedModel(MT3Model):
    """Decodes every segment to the same tokens and log-probabilities (``generate`` only)."""

    def __init__(self, events: list[tuple[int, float]]) -> None:
        super().__init__(TINY)
        self.ids = torch.tensor([i for i, _ in events] + [EOS_ID])
        self.log_probs = torch.tensor([math.log(p) for _, p in events] + [0.0])
        self.requests: list[bool] = []

    def generate(self, frames, max_length, use_cache, grammar, with_log_probs=False):  # noqa: ANN001, ANN201
        self.requests.append(with_log_probs)
        tokens = self.ids.expand(len(frames), -1)
        return (tokens, self.log_probs.expand(len(frames), -1)) if with_log_probs else tokens


def test_transcribe_track_passes_the_log_probs_to_the_note_decoding() -> None:
    model = ScriptedModel(
        [
            (token("tie", 0), 0.9),
            (token("shift", 10), 0.9),
            (token("velocity", 1), 0.9),
            (token("pitch", 60), 0.9),
            (token("pitch", 64), 0.05),
        ]
    )
    samples, frontend = torch.zeros(3 * 32768), LogMelFrontend()
    plain = transcribe_track(model, frontend, samples)
    unsure = transcribe_track(model, frontend, samples, min_onset_probability=0.1)
    assert model.requests == [False, True]  # MT3's decoding asks for no log-probabilities
    assert sorted(plain.notes[:, PITCH]) == [60, 60, 60, 60, 64, 64, 64, 64]  # 4 segments
    assert sorted(unsure.notes[:, PITCH]) == [60, 60, 60, 60] and unsure.unsure == 4
    assert (unsure.invalid, plain.unsure) == (plain.invalid, 0)


def test_cli_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    export = Transcriber(MT3Model(TINY)).save(tmp_path / "model")
    sf.write(tmp_path / "in.wav", np.random.default_rng(0).standard_normal(20_000) * 0.1, 16000)
    args = [str(tmp_path / "in.wav"), str(tmp_path / "x.mid"), "--checkpoint", str(export)]
    assert cli.main([*args, "--max-length", "24", "--min-onset-prob", "0.2"]) == 0
    assert (tmp_path / "x.mid").is_file()
    capsys.readouterr()
    for bad in ("1", "-0.1"):
        assert cli.main([*args, "--min-onset-prob", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: --min-onset-prob {float(bad)} must be in [0, 1)"]
