"""Note arrays: the one representation of notes shared by datasets, crops and tokenizers.

A note array is a float64 ``numpy`` array of shape ``(N, 8)``; the columns are named by
:data:`NOTE_FIELDS`. Times are in seconds. ``tied_start`` marks a note that began before the
crop it was cut from (the transcription tokenizer emits it in the tie prefix), ``tied_end`` a
note that was still sounding at the end of the crop. Drums are onset events: their ``end`` is
kept for reference but a drum note belongs to a crop only when its onset does.

Two ways to cut a crop: :func:`crop_notes` shifts the notes to crop time and clips them;
:func:`window_notes` keeps them in track time, unclipped, for consumers (MT3's tokenizer) that
need the exact times of the track.
"""

from __future__ import annotations

import io

import numpy as np
import pretty_midi

NOTE_FIELDS = ("start", "end", "pitch", "velocity", "program", "is_drum", "tied_start", "tied_end")
START, END, PITCH, VELOCITY, PROGRAM, IS_DRUM, TIED_START, TIED_END = range(len(NOTE_FIELDS))


def empty_notes() -> np.ndarray:
    """An array of zero notes with the right number of columns."""
    return np.zeros((0, len(NOTE_FIELDS)), dtype=np.float64)


def notes_from_midi(midi: pretty_midi.PrettyMIDI) -> np.ndarray:
    """All notes of a MIDI file with their programs and drum flags, sorted by onset then pitch."""
    rows = [
        (n.start, n.end, n.pitch, n.velocity, inst.program, float(inst.is_drum), 0.0, 0.0)
        for inst in midi.instruments
        for n in inst.notes
    ]
    if not rows:
        return empty_notes()
    notes = np.asarray(rows, dtype=np.float64)
    return notes[np.lexsort((notes[:, PITCH], notes[:, START]))]


def notes_from_midi_bytes(data: bytes) -> np.ndarray:
    """Parse MIDI file bytes into a note array (raises ``ValueError`` on a malformed file)."""
    try:
        midi = pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as err:  # mido raises several unrelated types on corrupt files
        raise ValueError(f"malformed MIDI: {err}") from err
    return notes_from_midi(midi)


def crop_notes(notes: np.ndarray, start: float, end: float) -> np.ndarray:
    """Notes sounding in ``[start, end)``, shifted so that ``start`` becomes 0 and clipped to the crop.

    Pitched notes that began before ``start`` get ``tied_start = 1`` and onset 0; notes that last
    past ``end`` get ``tied_end = 1`` and offset ``end - start``. Drum hits are kept only when
    their onset lies inside the crop.
    """
    if end <= start:
        raise ValueError(f"empty crop [{start}, {end})")
    drum = notes[:, IS_DRUM] > 0
    onset_inside = (notes[:, START] >= start) & (notes[:, START] < end)
    overlaps = (notes[:, START] < end) & (notes[:, END] > start)
    keep = np.where(drum, onset_inside, overlaps)
    out = notes[keep].copy()
    pitched = out[:, IS_DRUM] == 0
    out[:, TIED_START] = np.where(pitched & (out[:, START] < start), 1.0, out[:, TIED_START])
    out[:, TIED_END] = np.where(pitched & (out[:, END] > end), 1.0, out[:, TIED_END])
    out[:, START] = np.clip(out[:, START], start, end) - start
    out[:, END] = np.clip(out[:, END], start, end) - start
    return out


def trim_overlapping_notes(notes: np.ndarray) -> np.ndarray:
    """MT3's training-time cleanup: for each (pitch, program, is_drum), a note that is still
    sounding when the next one (by onset) starts ends there; notes left with no length are
    dropped. Trimming a trimmed array changes nothing."""
    out = np.array(notes, dtype=np.float64, copy=True).reshape(-1, len(NOTE_FIELDS))
    order = np.lexsort((out[:, START], out[:, IS_DRUM], out[:, PROGRAM], out[:, PITCH]))
    for prev, cur in zip(order[:-1], order[1:], strict=True):
        same = (out[prev, [PITCH, PROGRAM, IS_DRUM]] == out[cur, [PITCH, PROGRAM, IS_DRUM]]).all()
        if same and out[prev, END] > out[cur, START]:
            out[prev, END] = out[cur, START]
    return out[out[:, START] < out[:, END]]


def merge_repeated_onsets(notes: np.ndarray, within: float) -> np.ndarray:
    """Decoding cleanup for small models (not MT3's): a note whose onset comes less than
    ``within`` seconds after the previous onset of the same (pitch, program, is_drum) is
    dropped, and the note that starts its run (onsets each less than ``within`` apart) lasts
    to the latest end of the run. The kept notes stay in their input order; ``within <= 0``
    changes nothing."""
    if within <= 0 or len(notes) < 2:
        return notes
    order = np.lexsort((notes[:, START], notes[:, IS_DRUM], notes[:, PROGRAM], notes[:, PITCH]))
    ranked = notes[order]
    key = ranked[:, [PITCH, PROGRAM, IS_DRUM]]
    repeat = np.zeros(len(ranked), dtype=bool)
    repeat[1:] = (key[1:] == key[:-1]).all(axis=1) & (np.diff(ranked[:, START]) < within)
    run = np.cumsum(~repeat) - 1
    kept = ranked[~repeat].copy()
    for column in (END, TIED_END):
        np.maximum.at(kept[:, column], run, ranked[:, column])
    return kept[np.argsort(order[~repeat], kind="stable")]


def window_notes(notes: np.ndarray, start: float, end: float, lead: float = 0.0) -> np.ndarray:
    """The notes of the crop ``[start, end)`` in track time, unclipped.

    Pitched notes sounding in ``[start - lead, end)`` and drum hits with their onset there are
    kept (``lead`` keeps notes that ended or drum hits that came just before the crop);
    ``tied_start`` / ``tied_end`` mark the pitched notes that start before ``start`` / end
    after ``end``.
    """
    lo = start - lead
    drum = notes[:, IS_DRUM] > 0
    keep = np.where(
        drum,
        (notes[:, START] >= lo) & (notes[:, START] < end),
        (notes[:, START] < end) & (notes[:, END] > lo),
    )
    out = notes[keep].copy()
    pitched = out[:, IS_DRUM] == 0
    out[:, TIED_START] = np.where(pitched & (out[:, START] < start), 1.0, 0.0)
    out[:, TIED_END] = np.where(pitched & (out[:, END] > end), 1.0, 0.0)
    return out


def notes_to_midi(notes: np.ndarray) -> pretty_midi.PrettyMIDI:
    """Build a MIDI object with one instrument per (program, is_drum) pair."""
    midi = pretty_midi.PrettyMIDI()
    instruments: dict[tuple[int, bool], pretty_midi.Instrument] = {}
    for row in notes:
        key = (int(row[PROGRAM]), bool(row[IS_DRUM]))
        if key not in instruments:
            instruments[key] = pretty_midi.Instrument(program=key[0], is_drum=key[1])
        instruments[key].notes.append(
            pretty_midi.Note(
                int(row[VELOCITY]), int(row[PITCH]), float(row[START]), float(row[END])
            )
        )
    midi.instruments = [instruments[k] for k in sorted(instruments)]
    return midi
