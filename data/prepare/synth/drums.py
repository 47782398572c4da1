"""A drum part that follows the meter: kick on downbeats, snare on backbeats, cymbal subdivisions."""

from __future__ import annotations

import numpy as np

from data.prepare.synth.notation import DENOMINATOR, NUMERATOR, bar_beats, beat_length

KICK, SNARE, CLOSED_HAT, CRASH, RIDE = 36, 38, 42, 49, 51


def _backbeats(beats: int) -> set[int]:
    """Beats 2 and 4 of four, 2 of two, 2 and 3 of three (a waltz)."""
    return set(range(1, beats, 2)) if beats % 2 == 0 else set(range(1, beats))


def drum_part(bars: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Drum hits over the measure rows ``bars`` as ``(N, 3)`` rows: onset (quarter lengths),
    GM drum pitch, velocity. A crash marks the first downbeat."""
    cymbal = int(rng.choice([CLOSED_HAT, RIDE]))
    dense = bool(rng.random() < 0.6)  # cymbal on every subdivision, else on every beat
    hits: list[tuple[float, int, float]] = []
    crashed = False
    for bar in bars:
        beats, positions = bar_beats(bar)
        beat, subdivisions = beat_length(int(bar[NUMERATOR]), int(bar[DENOMINATOR]))
        for k, t in positions:
            if k == 0 or (beats == 4 and k == 2):
                hits.append((t, KICK, 104 if k == 0 else 92))
            if k == 0 and not crashed:
                hits.append((t, CRASH, 100))
                crashed = True
            if k in _backbeats(beats):
                hits.append((t, SNARE, 96 if beats % 2 == 0 else 72))
            for j in range(subdivisions if dense else 1):
                hits.append((t + j * beat / subdivisions, cymbal, 70 if j == 0 else 56))
    out = np.asarray(hits, dtype=np.float64).reshape(-1, 3)
    out[:, 2] = np.clip(out[:, 2] + rng.normal(0.0, 5.0, len(out)), 1, 127).round()
    return out
