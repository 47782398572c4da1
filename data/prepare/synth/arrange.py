"""One arrangement of a corpus piece: crop, tempo, transposition, instruments, humanised MIDI.

All choices come from the example's random generator, so an example is a pure function of
the piece and the generator's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pretty_midi

from data.prepare.synth.corpus import STYLES, Piece
from data.prepare.synth.drums import CRASH, drum_part
from data.prepare.synth.harmony import accompany, estimate_key, key_name
from data.prepare.synth.instruments import (
    PALETTES,
    PLUCKED_PROGRAMS,
    RANGES,
    program_name,
    stem_for,
)
from data.prepare.synth.notation import BAR_LENGTH, LENGTH, OFFSET, ONSET, PITCH, Notation

MAX_SECONDS = 30.0  # longest crop of music, before the release tail
DRUM_PROBABILITY = 0.4
MAX_OTHER_PARTS = 4
RESOLUTION = 960  # MIDI ticks per quarter note


@dataclass(frozen=True)
class Arrangement:
    midi: pretty_midi.PrettyMIDI
    instruments: list[dict]  # {name, program, stem, is_drum} per MIDI instrument
    tempo: int  # quarter notes per minute
    tonic: int  # pitch class, after transposition
    mode: str
    transpose: int  # semitones

    @property
    def key(self) -> str:
        return key_name(self.tonic, self.mode)


def _crop(notation: Notation, bpm: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Measure rows of a crop: whole bars lasting at most ``seconds``, starting at the first bar
    half of the time, else at a random bar with an onset in the first half of the piece."""
    bars = notation.measures
    onsets = np.concatenate([part[:, ONSET] for part in notation.parts])
    has_onset = [
        bool(np.any((onsets >= b[OFFSET]) & (onsets < b[OFFSET] + b[BAR_LENGTH]))) for b in bars
    ]
    candidates = [i for i in range(max(1, len(bars) // 2)) if has_onset[i]] or [
        int(np.argmax(has_onset))
    ]
    first = candidates[0] if rng.random() < 0.5 else int(rng.choice(candidates))
    limit = seconds * bpm / 60.0
    ends = bars[first:, OFFSET] + bars[first:, BAR_LENGTH] - bars[first, OFFSET]
    return bars[first : first + max(1, int(np.searchsorted(ends, limit, side="right")))]


def _cut(notes: np.ndarray, start: float, end: float) -> np.ndarray:
    """Notes with an onset in ``[start, end)``, shortened to end by ``end``."""
    out = notes[(notes[:, ONSET] >= start) & (notes[:, ONSET] < end)].copy()
    out[:, LENGTH] = np.minimum(out[:, ONSET] + out[:, LENGTH], end) - out[:, ONSET]
    return out


def _fit_range(notes: np.ndarray, program: int) -> np.ndarray:
    """Move a part by the whole octaves that put most notes in the program's range (the
    smallest move among equals), then fold the remaining notes into it one by one."""
    low, high = RANGES[program]
    pitches = notes[:, PITCH]
    shifts = sorted(range(-36, 37, 12), key=abs)
    best = max(shifts, key=lambda s: int(np.sum((pitches + s >= low) & (pitches + s <= high))))
    moved = pitches + best
    moved += 12 * np.ceil(np.maximum(low - moved, 0) / 12) - 12 * np.ceil(
        np.maximum(moved - high, 0) / 12
    )
    out = notes.copy()
    out[:, PITCH] = moved
    return out


def _instrument(
    notes: np.ndarray,
    program: int,
    loudness: tuple[int, int],
    start: float,
    bpm: int,
    downbeats: np.ndarray,
    rng: np.random.Generator,
) -> pretty_midi.Instrument:
    """Humanised notes: onset jitter, per-part articulation, a base velocity drawn from
    ``loudness``, per-note variation and accented downbeats."""
    beat_seconds = 60.0 / bpm
    onsets = (notes[:, ONSET] - start) * beat_seconds + rng.normal(0.0, 0.006, len(notes)).clip(
        -0.015, 0.015
    )
    onsets = np.maximum(onsets, 0.0)
    ends = onsets + np.maximum(notes[:, LENGTH] * beat_seconds * rng.uniform(0.85, 0.97), 0.06)
    accent = np.isin(notes[:, ONSET], downbeats) * 8.0
    velocities = np.clip(
        rng.integers(*loudness, endpoint=True) + accent + rng.normal(0.0, 6.0, len(notes)), 30, 120
    ).round()
    instrument = pretty_midi.Instrument(program=program, name=program_name(program, False))
    last_onset: dict[int, float] = {}
    for i in np.argsort(
        -onsets, kind="stable"
    ):  # backwards: end each note before its pitch repeats
        pitch = int(notes[i, PITCH])
        end = min(ends[i], last_onset.get(pitch, np.inf) - 0.01)
        if end - onsets[i] >= 0.03:
            instrument.notes.append(
                pretty_midi.Note(int(velocities[i]), pitch, float(onsets[i]), float(end))
            )
        last_onset[pitch] = onsets[i]
    instrument.notes.sort(key=lambda n: (n.start, n.pitch))
    return instrument


def _drums(
    bars: np.ndarray, start: float, bpm: int, rng: np.random.Generator
) -> pretty_midi.Instrument:
    hits = drum_part(bars, rng)
    onsets = np.maximum((hits[:, 0] - start) * 60.0 / bpm + rng.normal(0.0, 0.003, len(hits)), 0.0)
    instrument = pretty_midi.Instrument(program=0, is_drum=True, name=program_name(0, True))
    for onset, (_, pitch, velocity) in zip(onsets, hits, strict=True):
        length = 1.2 if pitch == CRASH else 0.12
        instrument.notes.append(
            pretty_midi.Note(int(velocity), int(pitch), float(onset), float(onset + length))
        )
    return instrument


def arrange(piece: Piece, notation: Notation, rng: np.random.Generator) -> Arrangement:
    """Arrange ``piece``: top part on a voice or lead, lowest on a bass, the rest on one family
    of the style's palette; a single melody line gets a generated bass and chord part."""
    palette = PALETTES[piece.style]
    bpm = int(rng.integers(*STYLES[piece.style].tempo, endpoint=True))
    bars = _crop(notation, bpm, rng.uniform(0.6, 1.0) * MAX_SECONDS, rng)
    start, end = float(bars[0, OFFSET]), float(bars[-1, OFFSET] + bars[-1, BAR_LENGTH])
    parts = [p for p in (_cut(p, start, end) for p in notation.parts) if len(p)]
    tonic, mode = estimate_key(np.concatenate(parts))
    transpose = int(rng.integers(-5, 7))
    parts = sorted(parts, key=lambda p: -float(np.mean(p[:, PITCH])))
    family = palette["other"][int(rng.integers(len(palette["other"])))]
    other_programs = [int(rng.choice(family)) for _ in range(MAX_OTHER_PARTS)]
    if len(parts) == 1:
        bass, chords = accompany(parts[0], bars, tonic, mode, other_programs[0] in PLUCKED_PROGRAMS)
        parts = [parts[0], chords, bass]
    # (notes, program, velocity range) per part; the melody leads
    roles = [(parts[0], int(rng.choice(palette["vocals"][0])), (85, 110))]
    middle = parts[1:-1][:MAX_OTHER_PARTS]
    roles += [(p, program, (60, 85)) for p, program in zip(middle, other_programs, strict=False)]
    roles += [(parts[-1], int(rng.choice(palette["bass"][0])), (75, 100))] if len(parts) > 1 else []
    midi = pretty_midi.PrettyMIDI(resolution=RESOLUTION, initial_tempo=float(bpm))
    downbeats = bars[:, OFFSET]
    for notes, program, loudness in roles:
        shifted = notes.copy()
        shifted[:, PITCH] += transpose
        fitted = _fit_range(shifted, program)
        midi.instruments.append(_instrument(fitted, program, loudness, start, bpm, downbeats, rng))
    if rng.random() < DRUM_PROBABILITY:
        midi.instruments.append(_drums(bars, start, bpm, rng))
    tonic = (tonic + transpose) % 12
    midi.key_signature_changes = [
        pretty_midi.KeySignature(tonic + (12 if mode == "minor" else 0), 0.0)
    ]
    midi.time_signature_changes = [
        pretty_midi.TimeSignature(int(b[2]), int(b[3]), (b[OFFSET] - start) * 60.0 / bpm)
        for i, b in enumerate(bars)
        if i == 0 or tuple(b[2:]) != tuple(bars[i - 1, 2:])
    ]
    instruments = [
        {
            "name": i.name,
            "program": i.program,
            "stem": stem_for(i.program, i.is_drum),
            "is_drum": i.is_drum,
        }
        for i in midi.instruments
    ]
    return Arrangement(midi, instruments, bpm, tonic, mode, transpose)
