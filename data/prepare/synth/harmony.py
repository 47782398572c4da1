"""Tonal helpers: key estimation and a bass + chord accompaniment for a single melody line."""

from __future__ import annotations

import numpy as np
from music21.analysis.discrete import AardenEssen

from data.prepare.synth.notation import LENGTH, ONSET, PITCH, bar_beats

_PROFILES = {mode: np.asarray(AardenEssen().getWeights(mode)) for mode in ("major", "minor")}
# (semitones above the tonic, triad intervals, prior) of the chords an accompaniment may use
_CHORDS = {
    "major": (
        (0, (0, 4, 7), 0.3),
        (5, (0, 4, 7), 0.2),
        (7, (0, 4, 7), 0.25),
        (9, (0, 3, 7), 0.1),
        (2, (0, 3, 7), 0.05),
    ),
    "minor": (
        (0, (0, 3, 7), 0.3),
        (5, (0, 3, 7), 0.2),
        (7, (0, 4, 7), 0.25),
        (3, (0, 4, 7), 0.1),
        (8, (0, 4, 7), 0.1),
        (10, (0, 4, 7), 0.05),
    ),
}
_SHARP_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
_FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def estimate_key(notes: np.ndarray) -> tuple[int, str]:
    """Tonic pitch class and mode whose Aarden-Essen profile best correlates with the
    duration-weighted pitch-class histogram of ``notes`` (rows: onset, length, pitch)."""
    histogram = np.bincount(
        notes[:, PITCH].astype(int) % 12, weights=notes[:, LENGTH], minlength=12
    )
    if not histogram.any():
        return 0, "major"
    scores = {
        (tonic, mode): float(np.corrcoef(histogram, np.roll(profile, tonic))[0, 1])
        for mode, profile in _PROFILES.items()
        for tonic in range(12)
    }
    return max(scores, key=scores.__getitem__)


def key_name(tonic: int, mode: str) -> str:
    """``(9, "minor")`` -> ``"A minor"``, with the usual spelling of each key."""
    names = _SHARP_NAMES if mode == "minor" else _FLAT_NAMES
    return f"{names[tonic % 12]} {mode}"


def _windows(bars: np.ndarray) -> list[tuple[float, float, list[float]]]:
    """Harmonic windows (start, end, beat positions): one per bar, two for four-beat bars."""
    out = []
    for bar in bars:
        beats, positions = bar_beats(bar)
        end = float(bar[0] + bar[1])
        if beats == 4 and len(positions) == 4:
            out += [(positions[0][1], positions[2][1], [positions[0][1], positions[1][1]])]
            out += [(positions[2][1], end, [positions[2][1], positions[3][1]])]
        else:
            out.append((float(bar[0]), end, [t for _, t in positions] or [float(bar[0])]))
    return out


def _best_chord(
    melody: np.ndarray, start: float, end: float, tonic: int, mode: str
) -> tuple[int, tuple[int, ...]]:
    """The diatonic triad (root pitch class, pitch classes) covering most melody time in the window."""
    overlap = np.clip(
        np.minimum(melody[:, ONSET] + melody[:, LENGTH], end) - np.maximum(melody[:, ONSET], start),
        0,
        None,
    )
    classes = melody[:, PITCH].astype(int) % 12
    best, best_score = (tonic, (0, 4, 7)), -1.0
    for degree, triad, prior in _CHORDS[mode]:
        root = (tonic + degree) % 12
        members = [(root + i) % 12 for i in triad]
        score = overlap[np.isin(classes, members)].sum() + 0.5 * overlap[classes == root].sum()
        score += prior * (end - start)
        if score > best_score:
            best, best_score = (root, tuple(members)), score
    return best


def accompany(
    melody: np.ndarray, bars: np.ndarray, tonic: int, mode: str, strum: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A bass line (root, then fifth halfway through longer windows) and a chord part (held
    triads, or struck on every beat when ``strum``) under ``melody``; note arrays in the same
    quarter-length time as ``bars``."""
    bass, chords = [], []
    for start, end, beats in _windows(bars):
        root, members = _best_chord(melody, start, end, tonic, mode)
        low = 36 + (root - 36) % 12
        if len(beats) >= 2 and len(beats) % 2 == 0:
            middle = beats[len(beats) // 2]
            fifth = low + 7 if low + 7 <= 47 else low - 5
            bass += [(start, middle - start, low), (middle, end - middle, fifth)]
        else:
            bass.append((start, end - start, low))
        strikes = [*beats, end] if strum else [start, end]
        for onset, stop in zip(strikes[:-1], strikes[1:], strict=True):
            chords += [(onset, stop - onset, 55 + (pc - 55) % 12) for pc in members]
    return np.asarray(bass, dtype=np.float64).reshape(-1, 3), np.asarray(
        chords, dtype=np.float64
    ).reshape(-1, 3)
