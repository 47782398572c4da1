"""Notes <-> MT3 tokens for one segment, re-deriving magenta/mt3's encoding and decoding.

Encoding (``notes_to_tokens``), as MT3's ``note_sequences`` + ``run_length_encoding``:

* A tie section opens the segment: one ``program, pitch`` pair per distinct (program, pitch)
  of the pitched notes with ``tied_start`` (sorted by program, then pitch), then ``tie``.
* Events follow in time order. Notes are first ordered by (is_drum, program, pitch); the offsets
  of pitched notes are listed before all onsets, and a stable sort on the (unquantised) event
  time puts them in time order, so at equal times offsets come before onsets and pitched onsets
  before drum hits. Times are rounded to 10 ms steps (half to even).
* A pitched onset is ``program, velocity 1, pitch``; an offset ``program, velocity 0, pitch``
  (none for ``tied_end`` notes); a drum hit ``velocity 1, drum`` (drums have no offsets).
* Program tokens are mapped to the granularity (``flat`` drops them), then program and
  velocity tokens that repeat the current state are removed (state carried through the segment,
  tie section included), and each run of time steps becomes one ``shift`` holding the absolute
  number of steps since the segment start (split into chunks of at most 1000).
* ``EOS`` ends the sequence.

Decoding (``NoteDecoder``, ``tokens_to_notes``) follows MT3's ``decode_events`` and
``decode_note_event``: it stops at ``EOS``; ids it cannot read (PAD, UNK, out of range) and
events that contradict the state are counted as invalid and skipped; once a shift passes
``max_time`` the rest of the segment is counted as dropped. A re-onset of a sounding
(program, pitch) ends the earlier note; ``tie`` ends the sounding notes not named in the tie
section; drum hits last 10 ms; every note lasts at least 10 ms. Velocity and program state
persist across segments, and before any velocity token onsets get velocity 100 (MT3's
default). Times are kept in integer microseconds so that segment boundaries compare exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from musicgen.notes import END, IS_DRUM, PITCH, PROGRAM, START, TIED_END, TIED_START, VELOCITY
from musicgen.transcription.vocabulary import (
    EOS_ID,
    GRANULARITIES,
    MAX_SHIFT_STEPS,
    NUM_SPECIAL_IDS,
    STEPS_PER_SECOND,
    Granularity,
    bin_to_velocity,
    decode_event,
    map_program,
    token,
    velocity_to_bin,
)

DEFAULT_VELOCITY = 100  # velocity of onsets decoded before any velocity token
_US_PER_SECOND = 1_000_000
_US_PER_STEP = _US_PER_SECOND // STEPS_PER_SECOND
_MIN_NOTE_US = _US_PER_STEP  # minimum note length and drum-hit length: 10 ms


def trim_overlapping_notes(notes: np.ndarray) -> np.ndarray:
    """MT3's training-time cleanup: for each (pitch, program, is_drum), a note that is still
    sounding when the next one starts ends there; notes left with no length are dropped."""
    out = np.array(notes, dtype=np.float64, copy=True)
    order = np.lexsort((out[:, START], out[:, IS_DRUM], out[:, PROGRAM], out[:, PITCH]))
    for prev, cur in zip(order[:-1], order[1:], strict=True):
        same = (out[prev, [PITCH, PROGRAM, IS_DRUM]] == out[cur, [PITCH, PROGRAM, IS_DRUM]]).all()
        if same and out[prev, END] > out[cur, START]:
            out[prev, END] = out[cur, START]
    return out[out[:, START] < out[:, END]]


def _tie_section(notes: np.ndarray) -> list[tuple[str, int]]:
    tied = notes[(notes[:, IS_DRUM] == 0) & (notes[:, TIED_START] > 0)]
    keys = sorted({(int(n[PROGRAM]), int(n[PITCH])) for n in tied})
    events = [ev for program, pitch in keys for ev in (("program", program), ("pitch", pitch))]
    return [*events, ("tie", 0)]


def _timed_events(notes: np.ndarray) -> list[tuple[int, list[tuple[str, int]]]]:
    """(step, events) per note onset/offset, in MT3's order."""
    notes = notes[np.lexsort((notes[:, PITCH], notes[:, PROGRAM], notes[:, IS_DRUM]))]
    times: list[float] = []
    groups: list[list[tuple[str, int]]] = []
    for n in notes:  # offsets of pitched notes first ...
        if n[IS_DRUM] == 0 and n[TIED_END] == 0:
            times.append(n[END])
            groups.append([("program", int(n[PROGRAM])), ("velocity", 0), ("pitch", int(n[PITCH]))])
    for n in notes:  # ... then onsets, pitched before drums
        velocity = ("velocity", max(1, velocity_to_bin(int(n[VELOCITY]))))  # onsets never bin 0
        if n[IS_DRUM] > 0:
            times.append(n[START])
            groups.append([velocity, ("drum", int(n[PITCH]))])
        elif n[TIED_START] == 0:
            times.append(n[START])
            groups.append([("program", int(n[PROGRAM])), velocity, ("pitch", int(n[PITCH]))])
    order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
    steps = np.rint(np.asarray(times, dtype=np.float64) * STEPS_PER_SECOND).astype(np.int64)
    return [(int(steps[i]), groups[i]) for i in order]


def notes_to_tokens(notes: np.ndarray, granularity: Granularity = "full") -> np.ndarray:
    """Model-id tokens (ending with ``EOS``) for the notes of one segment.

    ``notes`` is a note array with times in seconds from the segment start, as cut by
    :func:`musicgen.notes.crop_notes`: ``tied_start`` notes go to the tie section, ``tied_end``
    notes get no offset. Notes should not overlap on the same (program, pitch); see
    :func:`trim_overlapping_notes`.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown program granularity {granularity!r}; use one of {GRANULARITIES}")
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 8)
    stream = [(0, ev) for ev in _tie_section(notes)]
    stream += [(step, ev) for step, group in _timed_events(notes) for ev in group]
    out: list[int] = []
    state: dict[str, int] = {}
    emitted_step = 0
    for step, (kind, value) in stream:
        if kind == "program":
            if granularity == "flat":
                continue
            value = int(map_program(value, granularity))
        if kind in ("program", "velocity"):
            if state.get(kind) == value:
                continue
            state[kind] = value
        if step > emitted_step:
            remaining = step
            while remaining > 0:
                out.append(token("shift", min(remaining, MAX_SHIFT_STEPS)))
                remaining -= MAX_SHIFT_STEPS
            emitted_step = step
        out.append(token(kind, value))
    out.append(EOS_ID)
    return np.asarray(out, dtype=np.int64)


@dataclass
class DecodedNotes:
    """Notes decoded from tokens, with MT3's counts of invalid and dropped tokens."""

    notes: np.ndarray
    invalid: int = 0
    dropped: int = 0


def _us(seconds: float) -> int:
    return round(seconds * _US_PER_SECOND)


class NoteDecoder:
    """MT3's note decoding state for one track; feed it segments in time order, then ``finish``.

    ``invalid`` and ``dropped`` count the tokens skipped so far.
    """

    def __init__(self) -> None:
        self.invalid = 0
        self.dropped = 0
        self._now = 0  # microseconds, time of the last decoded event
        self._velocity = DEFAULT_VELOCITY
        self._program = 0
        # (pitch, program) -> (onset, velocity) of the sounding notes
        self._active: dict[tuple[int, int], tuple[int, int]] = {}
        self._tied: set[tuple[int, int]] = set()
        self._in_tie_section = False
        self._rows: list[tuple[int, int, int, int, int, int]] = []

    def decode_segment(
        self, tokens: Sequence[int] | np.ndarray, start_time: float, max_time: float | None = None
    ) -> None:
        """Decode one segment's model ids; shifts count from ``start_time`` (seconds). Tokens
        after a shift beyond ``max_time`` are dropped; decoding stops at ``EOS``."""
        ids = [int(t) for t in tokens]
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        self._tied = set()
        self._in_tie_section = True
        start = _us(start_time)
        limit = None if max_time is None else _us(max_time)
        steps, now = 0, start
        for i, model_id in enumerate(ids):
            try:
                kind, value = decode_event(model_id - NUM_SPECIAL_IDS)
            except ValueError:
                self.invalid += 1
                continue
            if kind == "shift":
                steps += value
                now = start + steps * _US_PER_STEP
                if limit is not None and now > limit:
                    self.dropped += len(ids) - i
                    break
                continue
            steps = 0
            try:
                self._apply(kind, value, now)
            except ValueError:
                self.invalid += 1

    def _apply(self, kind: str, value: int, now: int) -> None:
        if now < self._now:
            raise ValueError("event before the previous event")
        self._now = now
        if kind == "pitch":
            key = (value, self._program)
            if self._in_tie_section:
                if key not in self._active or key in self._tied:
                    raise ValueError("tie of a silent or already tied pitch")
                self._tied.add(key)
            elif self._velocity == 0:
                if key not in self._active:
                    raise ValueError("note-off of a silent pitch")
                self._end(key, now)
            else:
                if key in self._active:
                    self._end(key, now)
                self._active[key] = (now, self._velocity)
        elif kind == "drum":
            if self._velocity == 0:
                raise ValueError("drum hit with velocity 0")
            self._rows.append((now, now + _MIN_NOTE_US, value, self._velocity, 0, 1))
        elif kind == "velocity":
            self._velocity = bin_to_velocity(value)
        elif kind == "program":
            self._program = value
        else:  # tie
            if not self._in_tie_section:
                raise ValueError("tie outside the tie section")
            for key in [k for k in self._active if k not in self._tied]:
                self._end(key, self._now)
            self._in_tie_section = False

    def _end(self, key: tuple[int, int], end: int) -> None:
        onset, velocity = self._active.pop(key)
        self._rows.append((onset, max(end, onset + _MIN_NOTE_US), key[0], velocity, key[1], 0))

    def finish(self, end_time: float | None = None) -> np.ndarray:
        """End the notes still sounding and return all notes, sorted by onset.

        Sounding notes end together at the last decoded event time (MT3's flush) or at
        ``end_time`` when given, and at least 10 ms after the latest of their onsets.
        """
        close = self._now if end_time is None else _us(end_time)
        if self._active:
            close = max(close, max(onset for onset, _ in self._active.values()) + _MIN_NOTE_US)
        for key in list(self._active):
            self._end(key, close)
        if not self._rows:
            return np.zeros((0, 8), dtype=np.float64)
        rows = np.asarray(self._rows, dtype=np.float64)
        notes = np.zeros((len(rows), 8), dtype=np.float64)
        notes[:, [START, END]] = rows[:, :2] / _US_PER_SECOND
        notes[:, [PITCH, VELOCITY, PROGRAM, IS_DRUM]] = rows[:, 2:]
        return notes[
            np.lexsort((notes[:, PITCH], notes[:, PROGRAM], notes[:, IS_DRUM], notes[:, START]))
        ]


def tokens_to_notes(
    tokens: Sequence[int] | np.ndarray,
    start_time: float = 0.0,
    max_time: float | None = None,
    end_time: float | None = None,
) -> DecodedNotes:
    """Decode one segment's model ids into a note array (times in seconds, shifted by
    ``start_time``). See :class:`NoteDecoder` for ``max_time`` and ``end_time``."""
    decoder = NoteDecoder()
    decoder.decode_segment(tokens, start_time, max_time)
    return DecodedNotes(decoder.finish(end_time), decoder.invalid, decoder.dropped)
