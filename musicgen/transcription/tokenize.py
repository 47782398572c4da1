"""Notes <-> MT3 tokens for one segment, re-deriving magenta/mt3's encoding and decoding.

Encoding follows MT3's ``note_sequences`` + ``run_length_encoding`` chain:

* Each note gives an onset and (pitched notes only) an offset event. Notes are first ordered by
  (is_drum, program, pitch); the offsets of pitched notes are listed before all onsets, and a
  stable sort on the unrounded event time puts them in time order, so at equal times offsets
  come before onsets and pitched onsets before drum hits. Each event's step is its time
  rounded to 10 ms (``t * 100`` half to even).
* A pitched onset is ``program, velocity b, pitch``; an offset ``program, velocity 0, pitch``;
  a drum hit ``velocity b, drum`` (drums have no offsets). ``b`` is the onset's velocity bin
  under the codec (MT3's ``velocity_to_bin``): 1 for MT3's single bin, the MIDI velocity itself
  for the piano model's 127 bins.
* A segment ``[first, last)`` (in steps) holds the events whose step lies in it, after a tie
  section: one ``program, pitch`` pair per (program, pitch) sounding at step ``first`` (its
  onset step before ``first``, its offset step not), sorted by program then pitch, then
  ``tie``. Shifts count steps from ``first``.
* Without ties (the ISMIR 2021 piano model) a segment has no tie section; the offsets of notes
  that began before it are in it like any other event.
* Program tokens are mapped to the granularity (``flat`` drops them), then program and
  velocity tokens that repeat the current state are removed (state carried through the segment,
  tie section included), and each run of time steps becomes one ``shift`` holding the absolute
  number of steps since the segment start (split into chunks of at most 1000).
* ``EOS`` ends the sequence.

:func:`window_tokens` encodes windows of a track with notes in track time (MT3's training
targets); :func:`notes_to_tokens` encodes notes already cut to one segment by
:func:`musicgen.notes.crop_notes`, whose ``tied_start`` / ``tied_end`` flags stand for the tie
state.

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

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from musicgen.notes import (
    END,
    IS_DRUM,
    NOTE_FIELDS,
    PITCH,
    PROGRAM,
    START,
    TIED_END,
    TIED_START,
    VELOCITY,
)
from musicgen.transcription.vocabulary import (
    EOS_ID,
    GRANULARITIES,
    MAX_SHIFT_STEPS,
    MT3_CODEC,
    NUM_SPECIAL_IDS,
    STEPS_PER_SECOND,
    Codec,
    Granularity,
    bin_to_velocity,
    map_program,
    velocity_to_bin,
)

DEFAULT_VELOCITY = 100  # velocity of onsets decoded before any velocity token
_US_PER_SECOND = 1_000_000
_US_PER_STEP = _US_PER_SECOND // STEPS_PER_SECOND
_MIN_NOTE_US = _US_PER_STEP  # minimum note length and drum-hit length: 10 ms

Event = tuple[str, int]


def _note_array(notes: np.ndarray) -> np.ndarray:
    return np.asarray(notes, dtype=np.float64).reshape(-1, len(NOTE_FIELDS))


def _event_order(notes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MT3's order of the onsets and offsets of ``notes``: per event, the note index, whether it
    is the note's offset, and its 10 ms step (non-decreasing)."""
    by_key = np.lexsort((notes[:, PITCH], notes[:, PROGRAM], notes[:, IS_DRUM]))
    pitched = by_key[notes[by_key, IS_DRUM] == 0]
    index = np.concatenate([pitched, by_key])
    is_offset = np.arange(len(index)) < len(pitched)
    times = np.where(is_offset, notes[index, END], notes[index, START])
    order = np.argsort(times, kind="stable")
    steps = np.rint(times[order] * STEPS_PER_SECOND).astype(np.int64)
    return index[order], is_offset[order], steps


def _note_events(note: np.ndarray, is_offset: bool, num_velocity_bins: int) -> list[Event]:
    pitch, program = int(note[PITCH]), int(note[PROGRAM])
    if is_offset:
        return [("program", program), ("velocity", 0), ("pitch", pitch)]
    bin_ = velocity_to_bin(int(note[VELOCITY]), num_velocity_bins)
    velocity = ("velocity", max(1, bin_))  # onsets never bin 0
    if note[IS_DRUM] > 0:
        return [velocity, ("drum", pitch)]
    return [("program", program), velocity, ("pitch", pitch)]


def _model_id(codec: Codec, event_type: str, value: int) -> int:
    return codec.encode_event(event_type, value) + NUM_SPECIAL_IDS


def _tie_section(sounding: Iterable[tuple[int, int]]) -> list[Event]:
    """``program, pitch`` per sounding (program, pitch), sorted, then ``tie``."""
    pairs = [
        ev for program, pitch in sorted(sounding) for ev in (("program", program), ("pitch", pitch))
    ]
    return [*pairs, ("tie", 0)]


def _encode(
    stream: list[tuple[int, Event]], granularity: Granularity, codec: Codec = MT3_CODEC
) -> np.ndarray:
    """Model ids (of ``codec``) for (step from the segment start, event) pairs in order:
    programs mapped, redundant state changes removed, run-length shifts, ``EOS``."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown program granularity {granularity!r}; use one of {GRANULARITIES}")
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
                out.append(_model_id(codec, "shift", min(remaining, MAX_SHIFT_STEPS)))
                remaining -= MAX_SHIFT_STEPS
            emitted_step = step
        out.append(_model_id(codec, kind, value))
    out.append(EOS_ID)
    return np.asarray(out, dtype=np.int64)


def window_tokens(
    notes: np.ndarray,
    bounds: Sequence[int],
    granularity: Granularity = "full",
    codec: Codec = MT3_CODEC,
    ties: bool = True,
) -> list[np.ndarray]:
    """Model ids (each ending with ``EOS``) of the consecutive windows ``[bounds[i],
    bounds[i + 1])`` (10 ms steps, increasing) of a track whose notes are in track time.

    The notes must not overlap on the same (program, pitch), as after
    :func:`musicgen.notes.trim_overlapping_notes` over the whole track; notes whose events all
    lie before a window only matter through the tie state. Flags are ignored. ``codec``: the
    vocabulary (its velocity bins quantise onsets); ``ties=False`` leaves out the tie section,
    as MT3's ``NoteEncodingSpec`` (the ISMIR 2021 piano model) does: a window then starts
    straight with its events, the offsets of notes begun before it included.
    """
    notes = _note_array(notes)
    index, is_offset, steps = _event_order(notes)
    sounding: set[tuple[int, int]] = set()
    walked = 0
    out = []
    for first, last in zip(bounds[:-1], bounds[1:], strict=True):
        begin, stop = np.searchsorted(steps, [first, last], side="left")
        for i, off in zip(index[walked:begin], is_offset[walked:begin], strict=True):
            if notes[i, IS_DRUM] == 0:
                key = (int(notes[i, PROGRAM]), int(notes[i, PITCH]))
                (sounding.discard if off else sounding.add)(key)
        walked = max(walked, begin)
        stream = [(0, ev) for ev in _tie_section(sounding)] if ties else []
        stream += [
            (int(steps[j]) - first, ev)
            for j in range(begin, stop)
            for ev in _note_events(notes[index[j]], bool(is_offset[j]), codec.num_velocity_bins)
        ]
        out.append(_encode(stream, granularity, codec))
    return out


def notes_to_tokens(notes: np.ndarray, granularity: Granularity = "full") -> np.ndarray:
    """Model-id tokens (ending with ``EOS``) for the notes of one segment.

    ``notes`` is a note array with times in seconds from the segment start, as cut by
    :func:`musicgen.notes.crop_notes`: ``tied_start`` notes go to the tie section, ``tied_end``
    notes get no offset. Notes should not overlap on the same (program, pitch); see
    :func:`musicgen.notes.trim_overlapping_notes`. Training targets come from
    :func:`window_tokens`, which needs no flags.
    """
    notes = _note_array(notes)
    index, is_offset, steps = _event_order(notes)
    tied = (notes[:, IS_DRUM] == 0) & (notes[:, TIED_START] > 0)
    keep = np.where(is_offset, notes[index, TIED_END] == 0, ~tied[index])
    sounding = {(int(n[PROGRAM]), int(n[PITCH])) for n in notes[tied]}
    stream = [(0, ev) for ev in _tie_section(sounding)]
    stream += [
        (int(step), ev)
        for i, off, step in zip(index[keep], is_offset[keep], steps[keep], strict=True)
        for ev in _note_events(notes[i], bool(off), MT3_CODEC.num_velocity_bins)
    ]
    return _encode(stream, granularity)


@dataclass
class DecodedNotes:
    """Notes decoded from tokens, with MT3's counts of invalid and dropped tokens and the
    count of onsets left out as unsure (``min_onset_probability``; not MT3)."""

    notes: np.ndarray
    invalid: int = 0
    dropped: int = 0
    unsure: int = 0


def _us(seconds: float) -> int:
    return round(seconds * _US_PER_SECOND)


class NoteDecoder:
    """MT3's note decoding state for one track; feed it segments in time order, then ``finish``.

    ``invalid`` and ``dropped`` count the tokens skipped so far. ``codec``: the vocabulary's
    event codec; ``ties``: segments open with a tie section (MT3's ``NoteEncodingWithTiesSpec``);
    without (the ISMIR 2021 piano model's ``NoteEncodingSpec``) notes simply carry on across
    segments and a ``tie`` is invalid.

    ``min_onset_probability`` > 0 (not MT3): a segment decoded with the model's log-probability
    of each token leaves out every note onset (a ``pitch`` after a velocity > 0, outside the tie
    section) the model gave less than that probability, as if its token were absent: a note of
    that pitch already sounding carries on, and the left-out note's own note-off and ties are
    consumed without counting as invalid. ``unsure`` counts the onsets left out. Drums are kept.
    """

    def __init__(
        self, codec: Codec = MT3_CODEC, ties: bool = True, min_onset_probability: float = 0.0
    ) -> None:
        self.codec, self.ties = codec, ties
        self.min_onset_log_prob = math.log(min_onset_probability) if min_onset_probability else None
        self.invalid = 0
        self.dropped = 0
        self.unsure = 0
        self._now = 0  # microseconds, time of the last decoded event
        self._velocity = DEFAULT_VELOCITY
        self._program = 0
        # (pitch, program) -> (onset, velocity) of the sounding notes
        self._active: dict[tuple[int, int], tuple[int, int]] = {}
        self._tied: set[tuple[int, int]] = set()
        self._in_tie_section = False
        self._rows: list[tuple[int, int, int, int, int, int]] = []
        self._unsure: set[tuple[int, int]] = set()  # keys whose onset was left out
        self._unsure_tied: set[tuple[int, int]] = set()

    def decode_segment(
        self,
        tokens: Sequence[int] | np.ndarray,
        start_time: float,
        max_time: float | None = None,
        log_probs: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Decode one segment's model ids; shifts count from ``start_time`` (seconds). Tokens
        after a shift beyond ``max_time`` are dropped; decoding stops at ``EOS``. ``log_probs``
        (one per token): the model's log-probability of each, for ``min_onset_probability``."""
        ids = [int(t) for t in tokens]
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        threshold = None if log_probs is None else self.min_onset_log_prob
        self._tied, self._unsure_tied = set(), set()
        self._in_tie_section = self.ties
        start = _us(start_time)
        limit = None if max_time is None else _us(max_time)
        steps, now = 0, start
        for i, model_id in enumerate(ids):
            try:
                kind, value = self.codec.decode_event(model_id - NUM_SPECIAL_IDS)
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
            unsure = threshold is not None and float(log_probs[i]) < threshold
            try:
                self._apply(kind, value, now, unsure)
            except ValueError:
                self.invalid += 1

    def _apply(self, kind: str, value: int, now: int, unsure: bool = False) -> None:
        if now < self._now:
            raise ValueError("event before the previous event")
        self._now = now
        if kind == "pitch":
            key = (value, self._program)
            if self._in_tie_section:
                if key in self._unsure and key not in self._active:
                    self._unsure_tied.add(key)
                    return
                if key not in self._active or key in self._tied:
                    raise ValueError("tie of a silent or already tied pitch")
                self._tied.add(key)
            elif self._velocity == 0:
                if key not in self._active:
                    if key in self._unsure:
                        self._unsure.discard(key)
                        return
                    raise ValueError("note-off of a silent pitch")
                self._unsure.discard(key)
                self._end(key, now)
            elif unsure:
                self._unsure.add(key)
                self.unsure += 1
            else:
                self._unsure.discard(key)
                if key in self._active:
                    self._end(key, now)
                self._active[key] = (now, self._velocity)
        elif kind == "drum":
            if self._velocity == 0:
                raise ValueError("drum hit with velocity 0")
            self._rows.append((now, now + _MIN_NOTE_US, value, self._velocity, 0, 1))
        elif kind == "velocity":
            self._velocity = bin_to_velocity(value, self.codec.num_velocity_bins)
        elif kind == "program":
            self._program = value
        else:  # tie
            if not self._in_tie_section:
                raise ValueError("tie outside the tie section")
            for key in [k for k in self._active if k not in self._tied]:
                self._end(key, self._now)
            self._unsure &= self._unsure_tied | self._active.keys()
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
    codec: Codec = MT3_CODEC,
    ties: bool = True,
) -> DecodedNotes:
    """Decode one segment's model ids into a note array (times in seconds, shifted by
    ``start_time``). See :class:`NoteDecoder` for ``max_time``, ``end_time``, ``codec`` and
    ``ties``."""
    decoder = NoteDecoder(codec, ties)
    decoder.decode_segment(tokens, start_time, max_time)
    return DecodedNotes(decoder.finish(end_time), decoder.invalid, decoder.dropped)
