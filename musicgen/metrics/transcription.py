"""Transcription metrics as MT3 reports them (magenta/mt3 ``metrics.py``), through mir_eval.

Per track, with mir_eval's default tolerances (onset 50 ms, pitch 50 cents, offset 20 % of the
reference duration or at least 50 ms):

* ``onset_*``: notes matched on onset and pitch (``offset_ratio=None``), drums left out;
* ``onset_offset_*``: matched on onset, pitch and offset, drums left out;
* ``onset_offset_velocity_*``: matched on onset, pitch, offset and velocity
  (``mir_eval.transcription_velocity``: estimated velocities rescaled to the reference's by a
  least-squares fit over the matched notes, tolerance 0.1 of the reference velocity range),
  drums left out; the piano model's third note score (MT3's ``Onset + offset + velocity``);
* ``frame_*``: pitch x frame cells of pretty_midi piano rolls at 62.5 frames/s, drums left out,
  notes shorter than 50 ms lengthened to 50 ms, reference cells active where the summed
  velocity exceeds 30, estimated cells wherever positive;
* ``multi_{flat,midi_class,full}_*``: programs mapped to the granularity, each (program,
  is_drum) track matched separately (drums on onsets only, pitched notes on onset and offset)
  and the match counts pooled over tracks before precision and recall;
* ``drum_onset_*``: drum hits matched on onset and drum pitch.

Each comes as ``_precision``, ``_recall`` and ``_f1``; a metric with nothing to count is 0,
as in MT3. The dataset score is the mean over tracks (:func:`dataset_metrics`). Drum notes
are scored as program 0 (MT3 decodes every drum hit with program 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import mir_eval
import mir_eval.transcription_velocity
import numpy as np

from musicgen.notes import END, IS_DRUM, PITCH, PROGRAM, START, VELOCITY, notes_to_midi
from musicgen.transcription.vocabulary import GRANULARITIES, Granularity, map_program

FRAMES_PER_SECOND = 62.5
FRAME_VELOCITY_THRESHOLD = 30
MIN_FRAME_NOTE_SECONDS = 0.05


def _count_matches(
    ref: np.ndarray, est: np.ndarray, with_offsets: bool, with_velocity: bool = False
) -> int:
    """Number of mir_eval note matches (pitches converted from MIDI to Hz); ``with_velocity``
    matches velocities too (and always offsets)."""
    args = []
    for notes in (ref, est):
        notes = notes[notes[:, END] > notes[:, START]]  # as MT3, zero-length notes are left out
        args += [notes[:, [START, END]], mir_eval.util.midi_to_hz(notes[:, PITCH])]
        if with_velocity:
            args.append(notes[:, VELOCITY])
    if len(args[0]) == 0 or len(args[len(args) // 2]) == 0:
        return 0
    if with_velocity:
        return len(mir_eval.transcription_velocity.match_notes(*args))
    mir_eval.transcription.validate(*args)
    offset_ratio = 0.2 if with_offsets else None
    return len(mir_eval.transcription.match_notes(*args, offset_ratio=offset_ratio))


def _scores(prefix: str, matched: int, n_ref: int, n_est: int) -> dict[str, float]:
    precision = matched / n_est if n_est else 0.0
    recall = matched / n_ref if n_ref else 0.0
    return {
        f"{prefix}_precision": precision,
        f"{prefix}_recall": recall,
        f"{prefix}_f1": float(mir_eval.util.f_measure(precision, recall)),
    }


def _positive(notes: np.ndarray) -> int:
    return int(np.count_nonzero(notes[:, END] > notes[:, START]))


def _piano_roll(notes: np.ndarray) -> np.ndarray:
    notes = notes.copy()
    notes[:, END] = np.maximum(notes[:, END], notes[:, START] + MIN_FRAME_NOTE_SECONDS)
    return notes_to_midi(notes).get_piano_roll(fs=FRAMES_PER_SECOND)


def frame_scores(ref: np.ndarray, est: np.ndarray) -> dict[str, float]:
    """MT3's frame precision/recall/F1 of two drum-free note arrays."""
    ref_roll, est_roll = _piano_roll(ref), _piano_roll(est)
    width = max(ref_roll.shape[1], est_roll.shape[1])
    ref_on = np.pad(ref_roll, ((0, 0), (0, width - ref_roll.shape[1]))) > FRAME_VELOCITY_THRESHOLD
    est_on = np.pad(est_roll, ((0, 0), (0, width - est_roll.shape[1]))) > 0
    matched = int(np.count_nonzero(ref_on & est_on))
    return _scores("frame", matched, int(ref_on.sum()), int(est_on.sum()))


def multi_instrument_scores(
    ref: np.ndarray, est: np.ndarray, granularity: Granularity
) -> dict[str, float]:
    """Program-aware note scores, counts pooled over (program, is_drum) tracks."""
    keyed = []
    for notes in (ref, est):
        notes = notes.copy()
        drum = notes[:, IS_DRUM] > 0
        notes[:, PROGRAM] = np.where(drum, 0, map_program(notes[:, PROGRAM], granularity))
        keyed.append(notes)
    ref, est = keyed
    tracks = {(p, d) for notes in (ref, est) for p, d in notes[:, [PROGRAM, IS_DRUM]]}
    matched = n_ref = n_est = 0
    for program, is_drum in tracks:
        ref_track = ref[(ref[:, PROGRAM] == program) & (ref[:, IS_DRUM] == is_drum)]
        est_track = est[(est[:, PROGRAM] == program) & (est[:, IS_DRUM] == is_drum)]
        matched += _count_matches(ref_track, est_track, with_offsets=not is_drum)
        n_ref += _positive(ref_track)
        n_est += _positive(est_track)
    return _scores(f"multi_{granularity}", matched, n_ref, n_est)


def track_metrics(ref: np.ndarray, est: np.ndarray) -> dict[str, float]:
    """All metrics of one track; ``ref`` and ``est`` are note arrays in seconds."""
    ref = np.asarray(ref, dtype=np.float64).reshape(-1, 8)
    est = np.asarray(est, dtype=np.float64).reshape(-1, 8)
    ref_pitched, est_pitched = ref[ref[:, IS_DRUM] == 0], est[est[:, IS_DRUM] == 0]
    ref_drums, est_drums = ref[ref[:, IS_DRUM] > 0], est[est[:, IS_DRUM] > 0]
    n_ref, n_est = _positive(ref_pitched), _positive(est_pitched)
    scores = {
        **_scores("onset", _count_matches(ref_pitched, est_pitched, False), n_ref, n_est),
        **_scores("onset_offset", _count_matches(ref_pitched, est_pitched, True), n_ref, n_est),
        **_scores(
            "onset_offset_velocity",
            _count_matches(ref_pitched, est_pitched, True, with_velocity=True),
            n_ref,
            n_est,
        ),
        **frame_scores(ref_pitched, est_pitched),
        **_scores(
            "drum_onset",
            _count_matches(ref_drums, est_drums, False),
            _positive(ref_drums),
            _positive(est_drums),
        ),
    }
    for granularity in GRANULARITIES:
        scores.update(multi_instrument_scores(ref, est, granularity))
    return scores


def dataset_metrics(per_track: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over tracks (MT3's dataset score)."""
    if not per_track:
        raise ValueError("no tracks to average")
    return {key: float(np.mean([track[key] for track in per_track])) for key in per_track[0]}
