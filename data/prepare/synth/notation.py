"""A parsed score reduced to what arranging needs: notes per part and the measure grid.

Times are in quarter lengths from the start of the score. Tied notes are merged, grace notes
and chord symbols dropped, repeats left unexpanded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from music21 import chord, harmony, meter, stream

from data.prepare.synth.corpus import load_score

ONSET, LENGTH, PITCH = range(3)  # columns of a part's note array
OFFSET, BAR_LENGTH, NUMERATOR, DENOMINATOR = range(4)  # columns of the measure array


@dataclass(frozen=True)
class Notation:
    """``parts``: one ``(N, 3)`` array (onset, length, MIDI pitch) per non-empty part, in score
    order; ``measures``: ``(M, 4)`` rows (offset, actual length, time-signature numerator and
    denominator), so a pickup bar is shorter than its time signature."""

    parts: tuple[np.ndarray, ...]
    measures: np.ndarray
    title: str


def _part_notes(part: stream.Part) -> np.ndarray:
    """Notes of one part with tied notes merged (much faster than ``stripTies`` on long parts)."""
    rows: list[list[float]] = []
    tied: dict[int, int] = {}  # pitch -> row of the note its tie continues
    for el in part.flatten().notes:
        if isinstance(el, harmony.Harmony) or el.quarterLength <= 0:
            continue
        onset, length = float(el.offset), float(el.quarterLength)
        for note in el.notes if isinstance(el, chord.Chord) else (el,):
            pitch, tie = note.pitch.midi, (note.tie or el.tie)
            kind = tie.type if tie is not None else None
            if kind in ("continue", "stop") and pitch in tied:
                row = rows[tied[pitch]]
                row[LENGTH] = onset + length - row[ONSET]
                if kind == "stop":
                    del tied[pitch]
                continue
            rows.append([onset, length, float(pitch)])
            if kind in ("start", "continue"):
                tied[pitch] = len(rows) - 1
    notes = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return notes[np.lexsort((notes[:, PITCH], notes[:, ONSET]))]


def _measures(part: stream.Part, end: float) -> np.ndarray:
    """The bar grid of ``part``; plain 4/4 bars when the part has no measures."""
    first = part.recurse().getElementsByClass(meter.TimeSignature).first()
    signature = (first.numerator, first.denominator) if first else (4, 4)
    rows = []
    for measure in part.getElementsByClass(stream.Measure):
        if measure.timeSignature is not None:
            signature = (measure.timeSignature.numerator, measure.timeSignature.denominator)
        length = float(measure.duration.quarterLength)
        if length > 0:
            rows.append((float(measure.offset), length, *signature))
    if not rows:
        rows = [(float(t), 4.0, 4, 4) for t in np.arange(0.0, max(end, 4.0), 4.0)]
    return np.asarray(rows, dtype=np.float64)


@functools.lru_cache(maxsize=32)
def load_notation(source: str) -> Notation:
    """Parse the corpus file ``source`` (cached per process) and reduce it."""
    score = load_score(source)
    parts = [notes for notes in map(_part_notes, score.parts) if len(notes)]
    if not parts:
        raise ValueError(f"corpus piece {source} has no notes")
    end = max(float(n[-1, ONSET] + n[:, LENGTH].max()) for n in parts)
    title = (score.metadata.title if score.metadata else None) or source
    return Notation(tuple(parts), _measures(score.parts[0], end), title)


def beat_length(numerator: int, denominator: int) -> tuple[float, int]:
    """Beat length (quarter lengths) and subdivisions per beat: compound meters (6/8, 9/8,
    12/8) beat in dotted quarters split in three, the others in the denominator split in two."""
    if denominator >= 8 and numerator % 3 == 0 and numerator > 3:
        return 12.0 / denominator, 3
    return 4.0 / denominator, 2


def bar_beats(bar: np.ndarray) -> tuple[int, list[tuple[int, float]]]:
    """Beats per full bar and the ``(beat index, position)`` pairs inside one measure row. A
    short first bar of the score is a pickup: its beats are counted back from its end (a 1-beat
    pickup in 4/4 is beat 4); other short bars start on beat 1."""
    offset, length, numerator, denominator = (float(x) for x in bar)
    beat, _ = beat_length(int(numerator), int(denominator))
    full = numerator * 4.0 / denominator
    beats = max(1, round(full / beat))
    first = offset + min(0.0, length - full) if offset == 0.0 else offset
    inside = [(k, first + k * beat) for k in range(beats)]
    return beats, [(k, t) for k, t in inside if offset - 1e-6 <= t < offset + length - 1e-6]
