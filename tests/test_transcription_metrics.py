"""Transcription metrics against hand-computed mir_eval cases (MT3's metric rules)."""

from __future__ import annotations

import mir_eval
import mir_eval.transcription_velocity
import numpy as np
import pytest

from musicgen.metrics.transcription import dataset_metrics, track_metrics
from musicgen.notes import END, PITCH, START


def notes(*rows: tuple[float, ...]) -> np.ndarray:
    """Rows of (start, end, pitch, velocity, program, is_drum), zero-padded to 8 columns."""
    out = np.zeros((len(rows), 8))
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


REF = notes((0.0, 1.0, 60, 80), (1.0, 2.0, 62, 80), (2.0, 3.0, 64, 80))


def test_three_reference_notes_two_matched() -> None:
    # two matches within the tolerances, the last note has the wrong pitch
    est = notes((0.02, 1.0, 60, 127), (1.03, 2.1, 62, 127), (2.0, 3.0, 65, 127))
    scores = track_metrics(REF, est)
    for prefix in ("onset", "onset_offset"):
        assert scores[f"{prefix}_precision"] == scores[f"{prefix}_recall"] == pytest.approx(2 / 3)
        assert scores[f"{prefix}_f1"] == pytest.approx(2 / 3)
    # the same numbers straight from mir_eval (pitches in Hz)
    hz = mir_eval.util.midi_to_hz
    p, r, f, _ = mir_eval.transcription.precision_recall_f1_overlap(
        REF[:, [START, END]], hz(REF[:, PITCH]), est[:, [START, END]], hz(est[:, PITCH])
    )
    assert (p, r, f) == pytest.approx((2 / 3, 2 / 3, 2 / 3))

    two_of_three = track_metrics(REF, est[:2])
    assert two_of_three["onset_precision"] == 1.0
    assert two_of_three["onset_recall"] == pytest.approx(2 / 3)
    assert two_of_three["onset_f1"] == pytest.approx(0.8)


def test_onset_offset_velocity_as_mir_eval_transcription_velocity() -> None:
    """Velocities are compared after mir_eval's rescaling: a linear map of the reference
    velocities matches; a note far off the fit does not."""
    ref = notes((0.0, 1.0, 60, 40), (1.0, 2.0, 62, 80), (2.0, 3.0, 64, 120))
    scaled = ref.copy()
    scaled[:, 3] = ref[:, 3] * 0.5 + 10
    assert track_metrics(ref, scaled)["onset_offset_velocity_f1"] == 1.0
    off = ref.copy()
    off[:, 3] = [40, 80, 20]
    scores = track_metrics(ref, off)
    assert scores["onset_offset_f1"] == 1.0
    hz = mir_eval.util.midi_to_hz
    p, r, f, _ = mir_eval.transcription_velocity.precision_recall_f1_overlap(
        ref[:, [START, END]],
        hz(ref[:, PITCH]),
        ref[:, 3],
        off[:, [START, END]],
        hz(off[:, PITCH]),
        off[:, 3],
    )
    assert f < 1.0
    assert scores["onset_offset_velocity_f1"] == pytest.approx(f)
    assert (
        scores["onset_offset_velocity_precision"],
        scores["onset_offset_velocity_recall"],
    ) == pytest.approx((p, r))


def test_onset_tolerance_offsets_and_semitones() -> None:
    est = notes((0.04, 1.0, 60), (1.06, 2.0, 62), (2.0, 2.5, 64))  # in / out of 50 ms; short offset
    scores = track_metrics(REF, est)
    assert scores["onset_f1"] == pytest.approx(2 / 3)
    assert scores["onset_offset_f1"] == pytest.approx(1 / 3)
    # MIDI pitches go to mir_eval in Hz, so a semitone off is a miss (not within 50 cents)
    assert track_metrics(REF, notes((0, 1, 61), (1, 2, 63), (2, 3, 65)))["onset_f1"] == 0.0
    assert track_metrics(REF, notes())["onset_f1"] == 0.0


def test_drums_are_left_out_of_note_f1_and_scored_on_onsets() -> None:
    drums = notes((0.5, 0.6, 36, 100, 0, 1), (1.5, 1.6, 38, 100, 0, 1))
    est_drums = drums.copy()
    est_drums[:, END] += 3.0  # drum offsets do not count
    scores = track_metrics(np.vstack([REF, drums]), np.vstack([REF, est_drums, est_drums]))
    assert scores["onset_f1"] == scores["onset_offset_f1"] == scores["frame_f1"] == 1.0
    assert scores["drum_onset_precision"] == 0.5 and scores["drum_onset_recall"] == 1.0
    assert track_metrics(REF, REF)["drum_onset_f1"] == 0.0  # nothing to count, as in MT3


def test_multi_instrument_f1_scores_programs_separately_and_pools_counts() -> None:
    ref = notes((0, 1, 60, 80, 0), (1, 2, 62, 80, 0), (0, 1, 40, 80, 33), (0.5, 0.6, 36, 90, 0, 1))
    est = notes((0, 1, 60, 80, 0), (1, 2, 62, 80, 1), (0, 1, 40, 80, 33), (0.5, 0.9, 36, 90, 0, 1))
    scores = track_metrics(ref, est)
    assert scores["onset_offset_f1"] == 1.0  # programs ignored
    assert scores["multi_full_f1"] == pytest.approx(0.75)  # right pitch, wrong program: a miss
    assert scores["multi_midi_class_f1"] == 1.0  # programs 0 and 1 share a class
    assert scores["multi_flat_f1"] == 1.0
    est[1, 4] = 40  # another class
    assert track_metrics(ref, est)["multi_midi_class_f1"] == pytest.approx(0.75)

    # pooled counts, not a mean of per-program scores: program 0 matches 1 of 2 ref (1 est),
    # program 33 matches 1 of 1 ref (3 est) -> precision 2/4, recall 2/3
    ref = notes((0, 1, 60, 80, 0), (1, 2, 62, 80, 0), (0, 1, 40, 80, 33))
    est = notes((0, 1, 60, 80, 0), (0, 1, 40, 80, 33), (1, 2, 41, 80, 33), (2, 3, 42, 80, 33))
    scores = track_metrics(ref, est)
    assert scores["multi_full_precision"] == pytest.approx(0.5)
    assert scores["multi_full_recall"] == pytest.approx(2 / 3)
    assert scores["multi_full_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))


def test_frame_f1_on_a_62_5_fps_piano_roll() -> None:
    ref = notes((0.0, 1.0, 60, 80))  # frames 0..61 (int(1.0 * 62.5) = 62)
    half = track_metrics(ref, notes((0.0, 0.5, 60, 127)))  # frames 0..30
    assert half["frame_precision"] == 1.0
    assert half["frame_recall"] == pytest.approx(31 / 62)
    assert half["frame_f1"] == pytest.approx(2 * (31 / 62) / (1 + 31 / 62))
    # reference notes at velocity <= 30 are not active frames (MT3's threshold)
    quiet = np.vstack([ref, notes((0.0, 1.0, 64, 20))])
    assert track_metrics(quiet, ref)["frame_f1"] == 1.0
    assert track_metrics(quiet, quiet)["frame_precision"] == pytest.approx(0.5)
    # notes shorter than 50 ms count as 50 ms: 3 frames
    short = track_metrics(ref, notes((0.0, 0.01, 60, 127)))
    assert short["frame_recall"] == pytest.approx(3 / 62)


def test_dataset_score_is_the_mean_over_tracks() -> None:
    perfect, partial = track_metrics(REF, REF), track_metrics(REF, REF[:2])
    mean = dataset_metrics([perfect, partial])
    assert mean["onset_f1"] == pytest.approx((1.0 + 0.8) / 2)
    assert mean.keys() == perfect.keys()
    assert {f"multi_{g}_f1" for g in ("flat", "midi_class", "full")} <= mean.keys()
    with pytest.raises(ValueError):
        dataset_metrics([])
