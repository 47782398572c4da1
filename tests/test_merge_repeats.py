"""Merging repeated onsets (``merge_repeats_ms``, not MT3): runs of same-pitch onsets closer than
the gap become one note, in the note array, in ``transcribe_track``, the solver and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen import transcribe as cli
from musicgen.notes import END, IS_DRUM, NOTE_FIELDS, PITCH, PROGRAM, START, merge_repeated_onsets
from musicgen.transcription.frontend import LogMelFrontend
from musicgen.transcription.model import MT3Model
from musicgen.transcription.transcriber import Transcriber, transcribe_track
from tests.test_transcription_grammar import TINY


def note(start: float, end: float, pitch: int, program: int = 0, drum: int = 0) -> list[float]:
    return [start, end, pitch, 100, program, drum, 0, 0]


def test_a_run_of_repeats_becomes_its_first_note_lasting_to_the_latest_end() -> None:
    notes = np.array(
        [
            note(1.00, 1.01, 60),
            note(1.01, 1.30, 62),  # another pitch
            note(1.02, 1.50, 60),  # 20 ms after the first: merged
            note(1.03, 1.10, 60, program=40),  # another program
            note(1.06, 1.20, 60),  # 40 ms after the previous onset: the run goes on
            note(1.20, 1.40, 60),  # 140 ms on: a new note
            note(1.21, 1.25, 36, drum=1),
            note(1.22, 1.26, 36, drum=1),  # a drum repeat
        ]
    )
    merged = merge_repeated_onsets(notes, 0.05)
    expected = notes[[0, 1, 3, 5, 6]].copy()
    expected[0, END] = 1.50
    expected[4, END] = 1.26
    np.testing.assert_array_equal(merged, expected)


def test_no_gap_or_no_repeat_changes_nothing() -> None:
    notes = np.array([note(0.0, 0.5, 60), note(0.01, 0.5, 60)])
    assert merge_repeated_onsets(notes, 0.0) is notes
    spaced = np.array([note(0.0, 0.5, 60), note(0.05, 0.5, 60), note(0.0, 0.5, 61)])
    np.testing.assert_array_equal(merge_repeated_onsets(spaced, 0.05), spaced)
    empty = np.zeros((0, len(NOTE_FIELDS)))
    assert merge_repeated_onsets(empty, 0.05).shape == empty.shape


def loop_merge(notes: np.ndarray, within: float) -> list[tuple]:
    """A plain loop over each (pitch, program, drum) voice in onset order."""
    out = []
    for voice in {tuple(n[[PITCH, PROGRAM, IS_DRUM]]) for n in notes}:
        rows = sorted(
            (n for n in notes if tuple(n[[PITCH, PROGRAM, IS_DRUM]]) == voice),
            key=lambda n: n[START],
        )
        kept = [list(rows[0])]
        for prev, cur in zip(rows[:-1], rows[1:], strict=True):
            if cur[START] - prev[START] < within:
                kept[-1][END] = max(kept[-1][END], cur[END])
            else:
                kept.append(list(cur))
        out += [tuple(k) for k in kept]
    return sorted(out)


@pytest.mark.parametrize("seed", range(20))
def test_matches_a_plain_loop_on_random_notes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    starts = np.round(rng.uniform(0, 3, n), 2)
    notes = np.stack(
        [
            starts,
            starts + rng.uniform(0.01, 0.5, n),
            rng.integers(60, 64, n),
            np.full(n, 100),
            rng.choice([0, 40], n),
            rng.integers(0, 2, n),
            np.zeros(n),
            np.zeros(n),
        ],
        axis=1,
    )
    merged = merge_repeated_onsets(notes, 0.05)
    assert sorted(map(tuple, merged)) == loop_merge(notes, 0.05)
    assert np.all(np.diff(merged[:, START]) >= 0) == np.all(np.diff(notes[:, START]) >= 0)


def test_transcribe_track_merges_what_it_decodes() -> None:
    torch.manual_seed(0)
    model = MT3Model(TINY).eval()
    samples = torch.randn(40_000) * 0.1
    frontend = LogMelFrontend()
    plain = transcribe_track(model, frontend, samples, max_length=64)
    merged = transcribe_track(model, frontend, samples, max_length=64, merge_repeats=0.05)
    assert len(merged.notes) < len(plain.notes)  # this random model repeats its notes
    np.testing.assert_array_equal(merged.notes, merge_repeated_onsets(plain.notes, 0.05))
    assert (merged.invalid, merged.dropped) == (plain.invalid, plain.dropped)


def test_cli_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    export = Transcriber(MT3Model(TINY)).save(tmp_path / "model")
    sf.write(tmp_path / "in.wav", np.random.default_rng(0).standard_normal(20_000) * 0.1, 16000)
    args = [str(tmp_path / "in.wav"), str(tmp_path / "x.mid"), "--checkpoint", str(export)]
    assert cli.main([*args, "--max-length", "24", "--merge-repeats-ms", "50"]) == 0
    capsys.readouterr()
    assert cli.main([*args, "--merge-repeats-ms", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --merge-repeats-ms -1.0 must be >= 0 ms"]
