"""MT3 training targets equal magenta/mt3's, crop for crop (issue 15, part 1).

The reference is :mod:`tests.fixtures.mt3_reference`, an independent re-derivation of MT3's
chain; with ``MT3_SOURCE`` naming a magenta/mt3 checkout, MT3's own code is run on the same
crops too (:mod:`tests.fixtures.mt3_source`). Our side is the training path:
:func:`data.decode.cut_notes` (notes of a crop in track time) and
:func:`musicgen.transcription.crop_tokens` (what ``MT3Solver._targets`` calls).
Notes are ``(start, end, pitch, velocity, program, is_drum)``; crops are 16 kHz frame ranges.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from data.decode import cut_notes
from musicgen.transcription import (
    EOS_ID,
    GRANULARITIES,
    bin_to_velocity,
    crop_tokens,
    segment_origin_times,
    segment_tokens,
    time_step,
    token,
    token_name,
    tokens_to_notes,
    trim_overlapping_notes,
    velocity_to_bin,
)
from musicgen.transcription.transcriber import MODEL_TYPES
from tests.fixtures import mt3_reference as ref
from tests.fixtures import mt3_source

FRAME = 128  # samples per frame at 16 kHz
RATE = 16_000
PIANO = MODEL_TYPES["ismir2021"]  # 127 velocity bins, no ties, flat programs, 512 frames


def notes(*rows: tuple[float, ...]) -> np.ndarray:
    out = np.zeros((len(rows), 8))
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def ours(
    track: np.ndarray, a: int, b: int, granularity: str = "full", piano: bool = False
) -> list[int]:
    """Our target of frames ``[a, b)``: the crop as the data pipeline cuts it, then tokenized
    (with the piano model's codec and no ties when ``piano``)."""
    crop = cut_notes(track, a * FRAME, (b - a) * FRAME, RATE, "random")
    kind = PIANO if piano else MODEL_TYPES["mt3"]
    start, end = a * FRAME / RATE, b * FRAME / RATE
    return crop_tokens(crop, start, end, granularity, kind.codec, kind.ties).tolist()


def piano_names(tokens: list[int]) -> list[str]:
    """Readable names of the piano codec's model ids."""
    out = []
    for t in tokens:
        if t == EOS_ID:
            out.append("EOS")
            continue
        kind, value = PIANO.codec.decode_event(t - 3)
        out.append(kind if kind == "tie" else f"{kind} {value}")
    return out


def mt3(
    track: np.ndarray, a: int, b: int, n_frames: int, granularity: str = "full", stale=True
) -> list[int]:
    stream = ref.encode(ref.trim(ref.rows(track)), n_frames, stale_ties=stale)
    return ref.chunk_target(stream, a, b, n_frames, granularity)


def names(tokens: list[int]) -> list[str]:
    return [token_name(t) for t in tokens]


# --- the issue's minimal reproductions --------------------------------------------------------

REGRESSIONS = {
    "off-grid crop: shifts count from the crop start rounded down": (
        notes((0.9384113333163462, 4.1932729742299255, 98, 114, 48, 0)),
        62,
        "full",
        ["tie", "shift 45", "program 48", "velocity 1", "pitch 98", "EOS"],
    ),
    "exact half step: absolute times are rounded, half to even": (
        notes((3.245, 3.27, 76, 97, 32, 1)),
        370,
        "full",
        ["tie", "shift 28", "velocity 1", "drum 76", "EOS"],
    ),
    "onset just before the crop rounds into it": (
        notes((1.7979420070147152, 1.90782781566451, 22, 77, 65, 0)),
        225,
        "full",
        ["tie", "program 65", "velocity 1", "pitch 22", "shift 11", "velocity 0", "pitch 22", "EOS"],
    ),
    "times one ulp apart keep their order": (
        notes((6.138999999999999, 6.7355, 99, 115, 80, 0), (2.6189039808534504, 6.139, 92, 32, 0, 0)),
        768,
        "flat",
        ["pitch 92", "tie", "velocity 1", "pitch 99", "velocity 0", "pitch 92", "shift 60", "pitch 99", "EOS"],
    ),
    "overlaps are trimmed over the whole track before cropping": (
        notes((0.0, 5.0, 60, 100, 0, 0), (1.0, 2.0, 60, 100, 0, 0), (9.0, 9.5, 40, 100, 0, 0)),
        375,
        "full",
        ["tie", "EOS"],  # the first note ends at 1.0, where the second starts
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", REGRESSIONS)
def test_issue_reproductions(case: str) -> None:
    track, frame, granularity, expected = REGRESSIONS[case]
    end = frame + 256
    assert names(ours(track, frame, end, granularity)) == expected
    assert names(mt3(track, frame, end, 2000, granularity)) == expected
    samples = segment_tokens(track, frame * FRAME, end * FRAME, granularity)
    assert names(samples.tolist()) == expected


def test_short_chunks_have_targets() -> None:
    track = notes((0.9384113333163462, 4.1932729742299255, 98, 114, 48, 0))
    assert segment_tokens(track, 0, 128).tolist() == [token("tie"), EOS_ID] == [1134, 1]
    for a, b in [(0, 1), (117, 118), (117, 120), (500, 503)]:
        assert ours(track, a, b) == mt3(track, a, b, 2000)


def test_crop_start_steps_are_exact_at_any_offset() -> None:
    assert time_step(0.29) == 29  # 0.29 * 100 == 28.999999999999996
    for rate in (16_000, 22_050, 44_100, 48_000):
        starts = np.arange(0, 3600 * rate, 997 * 37, dtype=np.int64)
        got = [time_step(int(s) / rate) for s in starts]
        assert got == (starts * 100 // rate).tolist()


# --- randomized parity ------------------------------------------------------------------------


def random_time(rng: np.random.Generator) -> float:
    """A time in [0, 10] s, often on the 10 ms grid, a half step, a frame boundary, or one ulp
    off one of those."""
    kind = rng.integers(5)
    if kind == 0:
        t = rng.uniform(0, 10)
    elif kind == 1:
        t = rng.integers(1000) / 100
    elif kind == 2:
        t = (rng.integers(1000) + 0.5) / 100
    elif kind == 3:
        t = rng.integers(1250) / 125
    else:
        t = rng.integers(1000) * 0.01  # products, not quotients: often off by an ulp
    if rng.random() < 0.2:
        t = np.nextafter(t, np.inf if rng.random() < 0.5 else -np.inf)
    return float(max(t, 0.0))


def random_track(rng: np.random.Generator) -> np.ndarray:
    rows = []
    for _ in range(rng.integers(3, 50)):
        start = random_time(rng)
        end = random_time(rng) if rng.random() < 0.3 else start + rng.exponential(0.4)
        if end <= start:
            end = start + rng.choice([1e-3, 0.004, 0.01, 0.3])
        end = min(end, 11.5)  # inside the audio (deviation (b) is tested on its own)
        drum = rng.random() < 0.15
        program = rng.choice([0, 1, 5, 33, 48, 49])
        rows.append((start, end, rng.integers(36, 44), rng.integers(1, 128), program, drum))
    return notes(*rows)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_random_crops_match_mt3(granularity: str) -> None:
    """Thousands of crops (full, edge-length and 1-3 frame chunks): ours equal MT3's targets,
    except segments starting after a track's last event, where MT3 repeats a stale tie state
    (deviation (a), checked against the reference without it)."""
    rng = np.random.default_rng(15)
    n_frames = 1500  # 12 s: every event lies inside the audio
    compared = stale = 0
    for _ in range(60):
        track = random_track(rng)
        trimmed = ref.trim(ref.rows(track))
        stream = ref.encode(trimmed, n_frames)
        fresh = ref.encode(trimmed, n_frames, stale_ties=False)
        for _ in range(60):
            a = int(rng.integers(0, n_frames - 1))
            length = 256 if rng.random() < 0.9 else int(rng.integers(1, 4))
            b = min(a + length, n_frames)
            got = ours(track, a, b, granularity)
            assert got == ref.chunk_target(fresh, a, b, n_frames, granularity), (track, a, b)
            if ref.frame_step(a) > stream.last_event_step:
                stale += 1
                continue
            assert got == ref.chunk_target(stream, a, b, n_frames, granularity), (track, a, b)
            compared += 1
    assert compared >= 2500 and stale < compared / 4


def test_segment_tokens_and_crop_tokens_agree() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        track = random_track(rng)
        a = int(rng.integers(0, 1200))
        expected = segment_tokens(track, a * FRAME, (a + 256) * FRAME).tolist()
        assert ours(track, a, a + 256) == expected


def onset_steps(notes: np.ndarray) -> list[list[float]]:
    """Sorted (onset step, pitch) pairs."""
    return sorted(np.c_[np.rint(notes[:, 0] * 100), notes[:, 2]].tolist())


def test_decoded_targets_put_onsets_on_the_10_ms_grid() -> None:
    """Decoded from the crop's origin (as segments are at inference), a target's onsets are the
    notes' onsets rounded to 10 ms, whatever the crop's phase (before: 2-8 ms early)."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        track = random_track(rng)
        a = int(rng.integers(0, 1200))
        first, last = time_step(a * FRAME / RATE), time_step((a + 256) * FRAME / RATE)
        origin = first / 100
        decoded = tokens_to_notes(ours(track, a, a + 256), start_time=origin).notes
        trimmed = trim_overlapping_notes(track)
        steps = np.rint(trimmed[:, 0] * 100)
        inside = trimmed[(steps >= first) & (steps < last)]
        assert onset_steps(decoded) == onset_steps(inside)
        np.testing.assert_allclose(decoded[:, 0] * 100, np.rint(decoded[:, 0] * 100), atol=1e-6)


MT3_SOURCE = os.environ.get("MT3_SOURCE")


@pytest.mark.skipif(
    not MT3_SOURCE, reason="set MT3_SOURCE to a magenta/mt3 checkout to run MT3's own code"
)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_random_crops_match_mt3s_own_code(granularity: str) -> None:
    """MT3's own functions agree with the reference everywhere (its stale ties included) and
    with ours outside deviation (a)."""
    mt3_modules = mt3_source.load(Path(MT3_SOURCE))
    rng = np.random.default_rng(16)
    n_frames = 1500
    compared = 0
    for _ in range(30):
        track = random_track(rng)
        stream = ref.encode(ref.trim(ref.rows(track)), n_frames)
        chunks = []
        for _ in range(40):
            a = int(rng.integers(0, n_frames - 1))
            chunks.append((a, min(a + (256 if rng.random() < 0.9 else 3), n_frames)))
        theirs = mt3_source.chunk_targets(mt3_modules, track, n_frames, chunks, granularity)
        for (a, b), target in zip(chunks, theirs, strict=True):
            assert target == ref.chunk_target(stream, a, b, n_frames, granularity), (track, a, b)
            if ref.frame_step(a) <= stream.last_event_step:
                assert ours(track, a, b, granularity) == target, (track, a, b)
                compared += 1
    assert compared >= 900


@pytest.mark.skipif(
    not MT3_SOURCE, reason="set MT3_SOURCE to a magenta/mt3 checkout to run MT3's own code"
)
@pytest.mark.parametrize("case", REGRESSIONS)
def test_issue_reproductions_with_mt3s_own_code(case: str) -> None:
    track, frame, granularity, expected = REGRESSIONS[case]
    mt3_modules = mt3_source.load(Path(MT3_SOURCE))
    (target,) = mt3_source.chunk_targets(
        mt3_modules, track, 2000, [(frame, frame + 256)], granularity
    )
    assert names(target) == expected


# --- where we deviate from MT3 on purpose (README: "Where our MT3 targets differ") --------------


def test_deviation_a_no_stale_ties_after_the_last_event() -> None:
    track = notes((0.5, 1.0, 60, 100, 0, 0))
    # frame 250 (2.0 s) starts after the last event (the offset at step 100): MT3 repeats the
    # tie state from before that step, with the ended note still sounding
    assert names(mt3(track, 250, 506, 1250)) == ["program 0", "pitch 60", "tie", "EOS"]
    assert names(ours(track, 250, 506)) == ["tie", "EOS"]


def test_deviation_b_no_events_past_the_audio_end() -> None:
    track = notes((0.5, 3.0, 60, 100, 0, 0))
    # 2 s of audio (250 frames); MT3's last chunk takes the offset at 3.0 s, after the audio
    assert names(mt3(track, 0, 250, 250)) == [
        "tie", "shift 50", "program 0", "velocity 1", "pitch 60",
        "shift 300", "velocity 0", "pitch 60", "EOS",
    ]  # fmt: skip
    assert names(ours(track, 0, 250)) == [
        "tie", "shift 50", "program 0", "velocity 1", "pitch 60", "EOS",
    ]  # fmt: skip


def test_deviation_c_exact_segment_origins_at_inference() -> None:
    # MT3 decodes segment i from t - t % 0.01, t its first frame time as float32 (widened to
    # float64 by the NumPy 1.x it ran under): 10.24 s is 10.2399997..., which becomes 10.23
    frame_times = (np.arange(16) * 256 / 125).astype(np.float32)
    theirs = [float(t) - float(t) % 0.01 for t in frame_times]
    origins = segment_origin_times(16)
    assert origins[:6].tolist() == [0.0, 2.04, 4.09, 6.14, 8.19, 10.24]
    early = [i for i in range(16) if origins[i] - theirs[i] > 0.005]
    assert early == [5, 10, 15]


# --- the piano model (ISMIR 2021: 127 velocity bins, no ties, flat programs) -------------------

PIANO_CASES = {
    "a note inside the crop: its velocity is its bin": (
        notes((0.5, 3.0, 60, 70, 0, 0)),
        0,
        ["shift 50", "velocity 70", "pitch 60", "shift 300", "velocity 0", "pitch 60", "EOS"],
    ),
    "a note begun before the crop: no tie section, just its offset": (
        notes((0.5, 3.0, 60, 70, 0, 0)),
        250,
        ["shift 100", "velocity 0", "pitch 60", "EOS"],
    ),
    "programs are dropped after ordering (program 0 before 33), repeated velocities too": (
        notes((1.0, 1.5, 60, 90, 33, 0), (1.0, 1.5, 64, 90, 0, 0), (1.2, 1.3, 67, 1, 0, 0)),
        0,
        [
            "shift 100", "velocity 90", "pitch 64", "pitch 60",
            "shift 120", "velocity 1", "pitch 67",
            "shift 130", "velocity 0", "pitch 67",
            "shift 150", "pitch 64", "pitch 60", "EOS",
        ],
    ),
}  # fmt: skip


def piano_reference(track: np.ndarray, a: int, b: int, n_frames: int) -> list[int]:
    stream = ref.encode(ref.trim(ref.rows(track)), n_frames, velocity_bins=127)
    return ref.chunk_target(stream, a, b, n_frames, "flat", PIANO.codec, ties=False)


@pytest.mark.parametrize("case", PIANO_CASES)
def test_piano_targets(case: str) -> None:
    track, frame, expected = PIANO_CASES[case]
    end = frame + PIANO.segment_frames
    assert piano_names(ours(track, frame, end, "flat", piano=True)) == expected
    assert piano_names(piano_reference(track, frame, end, 2000)) == expected


def test_velocity_bins_follow_mt3() -> None:
    """MT3's ``velocity_to_bin``: ``ceil(bins * v / 127)``, 0 only for velocity 0; with 127
    bins a bin is the velocity itself and decodes back to it."""
    assert [velocity_to_bin(v, 127) for v in range(128)] == list(range(128))
    assert [velocity_to_bin(v, 1) for v in range(128)] == [0] + [1] * 127
    assert [bin_to_velocity(b, 127) for b in range(128)] == list(range(128))
    assert bin_to_velocity(1, 1) == 127
    assert [velocity_to_bin(v, 4) for v in (1, 31, 32, 33, 127)] == [1, 1, 2, 2, 4]


def test_random_piano_crops_match_mt3() -> None:
    """Random 512-frame (and 1-3 frame) crops: ours equal the re-derivation of MT3's chain
    with 127 velocity bins and no ties (no stale tie state to step around here)."""
    rng = np.random.default_rng(21)
    n_frames = 1500
    compared = 0
    for _ in range(25):
        track = random_track(rng)
        stream = ref.encode(ref.trim(ref.rows(track)), n_frames, velocity_bins=127)
        for _ in range(30):
            a = int(rng.integers(0, n_frames - 1))
            b = min(a + (512 if rng.random() < 0.9 else int(rng.integers(1, 4))), n_frames)
            expected = ref.chunk_target(stream, a, b, n_frames, "flat", PIANO.codec, ties=False)
            assert ours(track, a, b, "flat", piano=True) == expected, (track, a, b)
            compared += 1
    assert compared == 750


@pytest.mark.skipif(
    not MT3_SOURCE, reason="set MT3_SOURCE to a magenta/mt3 checkout to run MT3's own code"
)
def test_piano_crops_match_mt3s_own_code() -> None:
    """MT3's own chain for the piano task (127 bins, no state events, flat) equals ours, and
    its ``velocity_to_bin`` / ``bin_to_velocity`` equal ours for every velocity."""
    mt3_modules = mt3_source.load(Path(MT3_SOURCE))
    for bins in (1, 127):
        for v in range(128):
            assert velocity_to_bin(v, bins) == mt3_modules.vocabularies.velocity_to_bin(v, bins)
            assert bin_to_velocity(v % (bins + 1), bins) == (
                mt3_modules.vocabularies.bin_to_velocity(v % (bins + 1), bins)
            )
    for case, (track, frame, expected) in PIANO_CASES.items():
        (target,) = mt3_source.chunk_targets(
            mt3_modules, track, 2000, [(frame, frame + 512)], "flat", 127, ties=False
        )
        assert piano_names(target) == expected, case
    rng = np.random.default_rng(22)
    n_frames = 1500
    compared = 0
    for _ in range(20):
        track = random_track(rng)
        chunks = []
        for _ in range(30):
            a = int(rng.integers(0, n_frames - 1))
            chunks.append((a, min(a + (512 if rng.random() < 0.9 else 3), n_frames)))
        theirs = mt3_source.chunk_targets(
            mt3_modules, track, n_frames, chunks, "flat", 127, ties=False
        )
        for (a, b), target in zip(chunks, theirs, strict=True):
            assert ours(track, a, b, "flat", piano=True) == target, (track, a, b)
            compared += 1
    assert compared == 600
