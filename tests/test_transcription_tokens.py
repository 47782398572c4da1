"""MT3 codec, notes <-> tokens and segment stitching, re-deriving magenta/mt3's behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from musicgen.notes import END, IS_DRUM, PITCH, PROGRAM, START, VELOCITY, crop_notes
from musicgen.transcription import (
    EOS_ID,
    NUM_CODEC_IDS,
    PAD_ID,
    UNK_ID,
    VOCAB_SIZE,
    bin_to_velocity,
    codec_range,
    decode_event,
    encode_event,
    map_program,
    notes_to_segment_tokens,
    notes_to_tokens,
    num_segments,
    origin_step,
    segment_origin_times,
    segment_start_samples,
    segment_start_times,
    stitch_segments,
    token,
    token_name,
    tokens_to_notes,
    trim_overlapping_notes,
    velocity_to_bin,
)
from musicgen.transcription.transcriber import MODEL_TYPES


def notes(*rows: tuple[float, ...]) -> np.ndarray:
    """Rows of (start, end, pitch, velocity, program, is_drum, tied_start, tied_end), zero-padded."""
    out = np.zeros((len(rows), 8))
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def names(tokens: np.ndarray) -> list[str]:
    return [token_name(int(t)) for t in tokens]


_SPECIAL = {"EOS": EOS_ID, "PAD": PAD_ID, "UNK": UNK_ID}


def ids(*names_: str) -> list[int]:
    """Model ids from readable names such as ``"pitch 60"`` or ``"EOS"``."""
    out = []
    for name in names_:
        kind, _, value = name.partition(" ")
        out.append(_SPECIAL[kind] if kind in _SPECIAL else token(kind, int(value or 0)))
    return out


# --- vocabulary -------------------------------------------------------------------------------


def test_codec_id_ranges_and_vocabulary_size() -> None:
    assert codec_range("shift") == (0, 1000)
    assert codec_range("pitch") == (1001, 1128)
    assert codec_range("velocity") == (1129, 1130)
    assert codec_range("tie") == (1131, 1131)
    assert codec_range("program") == (1132, 1259)
    assert codec_range("drum") == (1260, 1387)
    assert NUM_CODEC_IDS == 1388
    # 3 special ids + 1388 codec ids + T5's 100 extra ids = 1491, padded to a multiple of 128
    assert VOCAB_SIZE == 1536
    assert (PAD_ID, EOS_ID, UNK_ID) == (0, 1, 2)
    assert token("shift", 0) == 3 and token("drum", 127) == 1390
    assert encode_event("pitch", 60) == 1061 and decode_event(1061) == ("pitch", 60)
    assert decode_event(1131) == ("tie", 0)
    with pytest.raises(ValueError):
        encode_event("shift", 1001)
    with pytest.raises(ValueError):
        decode_event(NUM_CODEC_IDS)


def test_velocity_bins() -> None:
    assert velocity_to_bin(0) == 0
    assert {velocity_to_bin(v) for v in range(1, 128)} == {1}
    assert bin_to_velocity(0) == 0 and bin_to_velocity(1) == 127
    assert all(velocity_to_bin(v, 127) == v == bin_to_velocity(v, 127) for v in range(128))


def test_program_granularities() -> None:
    assert [map_program(41, g) for g in ("flat", "midi_class", "full")] == [0, 40, 41]
    assert map_program(np.array([0, 7, 8, 127]), "midi_class").tolist() == [0, 0, 8, 120]
    with pytest.raises(ValueError):
        map_program(3, "family")


# --- notes -> tokens --------------------------------------------------------------------------


def test_shifts_hold_absolute_steps_since_segment_start() -> None:
    held = notes((0.03, 1, 60, 80, 0, 0, 0, 1), (0.06, 1, 62, 80, 0, 0, 0, 1))
    expected = ["tie", "shift 3", "velocity 1", "pitch 60", "shift 6", "pitch 62", "EOS"]
    assert names(notes_to_tokens(held, "flat")) == expected
    late = notes_to_tokens(notes((12.5, 13, 60, 80, 0, 0, 0, 1)), "flat")
    assert names(late)[:3] == ["tie", "shift 1000", "shift 250"]
    assert tokens_to_notes(late).notes[0, START] == 12.5


def test_repeated_program_and_velocity_tokens_are_removed() -> None:
    chord = notes((0, 0.5, 60, 80, 0), (0, 0.5, 64, 90, 0), (0.1, 0.5, 67, 70, 40))
    assert names(notes_to_tokens(chord)) == [
        "tie",
        "program 0", "velocity 1", "pitch 60", "pitch 64",
        "shift 10", "program 40", "pitch 67",
        "shift 50", "program 0", "velocity 0", "pitch 60", "pitch 64", "program 40", "pitch 67",
        "EOS",
    ]  # fmt: skip


def test_event_order_within_a_step() -> None:
    # offsets before onsets (so a repeated note ends then restarts), pitched onsets before drums
    repeated = notes((0, 0.5, 60, 80), (0.5, 1, 60, 80), (0.5, 0.6, 36, 100, 0, 1))
    assert names(notes_to_tokens(repeated))[4:9] == [
        "shift 50", "velocity 0", "pitch 60", "velocity 1", "pitch 60",
    ]  # fmt: skip
    assert names(notes_to_tokens(repeated))[9] == "drum 36"
    # programs are ordered at full granularity before being mapped (as MT3 maps tokens)
    two = notes((0, 1, 64, 80, 1), (0, 1, 60, 80, 2))
    assert names(notes_to_tokens(two, "midi_class"))[1:5] == [
        "program 0", "velocity 1", "pitch 64", "pitch 60",
    ]  # fmt: skip
    assert not any(n.startswith("program") for n in names(notes_to_tokens(two, "flat")))


def test_tie_prefix_lists_notes_sounding_at_the_segment_start() -> None:
    track = notes(
        (0.0, 3.0, 64, 80, 0),
        (0.5, 3.0, 60, 80, 0),
        (1.0, 2.5, 70, 80, 40),
        (1.5, 1.6, 36, 100, 0, 1),  # a drum hit before the crop is not tied
        (2.2, 2.4, 72, 80, 0),
    )
    assert names(notes_to_tokens(crop_notes(track, 2.0, 4.0))) == [
        "program 0", "pitch 60", "pitch 64", "program 40", "pitch 70", "tie",
        "shift 20", "program 0", "velocity 1", "pitch 72",
        "shift 40", "velocity 0", "pitch 72",
        "shift 50", "program 40", "pitch 70",
        "shift 100", "program 0", "pitch 60", "pitch 64",
        "EOS",
    ]  # fmt: skip
    # the program state set in the tie section carries into the segment
    tied = notes((0, 0.05, 70, 80, 40, 0, 1, 0))
    assert names(notes_to_tokens(tied)) == [
        "program 40", "pitch 70", "tie", "shift 5", "velocity 0", "pitch 70", "EOS",
    ]  # fmt: skip


def test_trim_overlapping_notes() -> None:
    track = notes((0, 2, 60, 80), (1, 3, 60, 80), (1, 1.5, 60, 80, 5), (2, 2, 62, 80))
    trimmed = trim_overlapping_notes(track)
    assert trimmed[:, [START, END, PITCH, PROGRAM]].tolist() == [
        [0, 1, 60, 0], [1, 3, 60, 0], [1, 1.5, 60, 5],
    ]  # fmt: skip


# --- tokens -> notes --------------------------------------------------------------------------


def test_decode_notes_and_re_onsets() -> None:
    tokens = ids("tie", "program 5", "velocity 1", "pitch 60", "shift 10", "pitch 60",
                 "shift 30", "velocity 0", "pitch 60", "EOS")  # fmt: skip
    decoded = tokens_to_notes(tokens, start_time=1.0)
    assert decoded.notes[:, :6].tolist() == [
        [1.0, 1.1, 60, 127, 5, 0],  # ended by the re-onset
        [1.1, 1.3, 60, 127, 5, 0],
    ]
    assert (decoded.invalid, decoded.dropped) == (0, 0)


def test_decode_drums() -> None:
    tokens = ids("tie", "program 30", "velocity 1", "drum 36", "shift 5", "drum 38")
    decoded = tokens_to_notes(tokens)
    assert decoded.notes[:, :6].tolist() == [[0, 0.01, 36, 127, 0, 1], [0.05, 0.06, 38, 127, 0, 1]]
    assert tokens_to_notes(ids("tie", "velocity 0", "drum 36")).invalid == 1


def test_decode_counts_invalid_tokens() -> None:
    tokens = [PAD_ID, UNK_ID, NUM_CODEC_IDS + 3] + ids(
        "tie", "tie",  # a second tie is outside the tie section
        "velocity 0", "pitch 61",  # note-off of a silent pitch
        "velocity 1", "pitch 60", "shift 20", "pitch 62",
        "shift 10", "pitch 64",  # shift going backwards
        "shift 30", "velocity 0", "pitch 60", "pitch 62",
        "EOS", "pitch 70",  # nothing after EOS is read
    )  # fmt: skip
    decoded = tokens_to_notes(tokens)
    assert decoded.invalid == 6 and decoded.dropped == 0
    assert decoded.notes[:, [START, END, PITCH]].tolist() == [[0, 0.3, 60], [0.2, 0.3, 62]]
    # a tie of a pitch that is not sounding is invalid too
    assert tokens_to_notes(ids("program 0", "pitch 60", "tie")).invalid == 1


def test_pitch_before_any_velocity_uses_mt3_default_velocity() -> None:
    decoded = tokens_to_notes(ids("tie", "pitch 60", "shift 10", "velocity 0", "pitch 60"))
    assert decoded.notes[:, :4].tolist() == [[0, 0.1, 60, 100]] and decoded.invalid == 0


def test_decode_max_time_cut_off() -> None:
    tokens = ids("tie", "velocity 1", "pitch 60", "shift 50", "pitch 62",
                 "shift 150", "pitch 64", "velocity 0", "EOS")  # fmt: skip
    decoded = tokens_to_notes(tokens, max_time=1.0)
    assert decoded.dropped == 3  # the shift past max_time and everything after it
    # still-sounding notes end together at the last event, and last at least 10 ms (MT3's flush)
    assert decoded.notes[:, [START, END, PITCH]].tolist() == [[0, 0.51, 60], [0.5, 0.51, 62]]
    assert tokens_to_notes(tokens, max_time=2.0).dropped == 0  # an event at max_time is kept
    closed = tokens_to_notes(tokens[:5], end_time=2.0)
    assert closed.notes[:, END].tolist() == [2.0, 2.0]


# --- segments ---------------------------------------------------------------------------------


def test_segment_start_times_from_integer_sample_counts() -> None:
    assert num_segments(600) == 3 and num_segments(512) == 2 and num_segments(513) == 3
    assert segment_start_samples(3).tolist() == [0, 32768, 65536]
    assert segment_start_times(3).tolist() == [0.0, 2.048, 4.096]
    assert origin_step(32768) == 204  # 2.048 s rounded down to the 10 ms step
    assert segment_origin_times(4).tolist() == [0.0, 2.04, 4.09, 6.14]


def test_events_belong_to_the_segment_of_their_rounded_step() -> None:
    # 2.037 s rounds to step 204, the origin of segment 1: MT3 puts those events in segment 1
    track = notes((1.0, 2.037, 60, 80), (2.037, 3.0, 62, 80))
    first, second = notes_to_segment_tokens(track, 2)
    assert names(first) == ["tie", "shift 100", "program 0", "velocity 1", "pitch 60", "EOS"]
    assert names(second) == [
        "program 0", "pitch 60", "tie",
        "velocity 0", "pitch 60", "velocity 1", "pitch 62",
        "shift 96", "velocity 0", "pitch 62",
        "EOS",
    ]  # fmt: skip
    decoded = stitch_segments([first, second])
    assert decoded.notes[:, [START, END, PITCH]].tolist() == [[1.0, 2.04, 60], [2.04, 3.0, 62]]


def test_note_spanning_three_segments_comes_back_as_one_note() -> None:
    track = notes((0.5, 5.5, 60, 80, 7), (1.0, 1.2, 64, 80, 7), (4.5, 4.7, 36, 90, 0, 1))
    tokens = notes_to_segment_tokens(track, 3)
    assert names(tokens[1]) == ["program 7", "pitch 60", "tie", "EOS"]
    decoded = stitch_segments(tokens)
    assert decoded.notes[:, [START, END, PITCH, PROGRAM, IS_DRUM]].tolist() == [
        [0.5, 5.5, 60, 7, 0], [1.0, 1.2, 64, 7, 0], [4.5, 4.51, 36, 0, 1],
    ]  # fmt: skip
    assert (decoded.invalid, decoded.dropped) == (0, 0)


def test_stitching_ends_notes_that_the_next_segment_does_not_continue() -> None:
    opened = ids("tie", "program 0", "velocity 1", "pitch 60", "EOS")
    ended = stitch_segments([opened, ids("tie", "EOS")])
    assert ended.notes[:, [START, END]].tolist() == [[0.0, 2.04]]  # at segment 1's tie
    continued = ids("program 0", "pitch 60", "tie", "shift 10", "velocity 0", "pitch 60")
    assert stitch_segments([opened, continued]).notes[:, [START, END]].tolist() == [[0.0, 2.14]]
    # predictions past the next segment's start are dropped
    overlong = ids("tie", "program 0", "velocity 1", "shift 210", "pitch 61")
    assert stitch_segments([overlong, ids("tie")]).dropped == 2


def test_round_trip_multi_instrument_exact_to_10_ms() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for program, pitch, is_drum in [(0, 60, 0), (0, 64, 0), (33, 40, 0), (41, 72, 0), (0, 36, 1)]:
        t = rng.uniform(0, 0.3)
        while t < 5.5:
            length = rng.uniform(0.05, 2.5) if not is_drum else 0.1
            rows.append((t, t + length, pitch, rng.integers(1, 128), program, is_drum))
            t += length + rng.uniform(0.0, 0.4)
    track = notes(*rows)
    track = track[track[:, END] < 6.1]  # inside the 3 segments (they cover up to 6.14 s)
    for granularity in ("full", "midi_class", "flat"):
        decoded = stitch_segments(notes_to_segment_tokens(track, 3, granularity))
        assert (decoded.invalid, decoded.dropped) == (0, 0)
        expected = track.copy()
        expected[:, [START, END]] = np.rint(expected[:, [START, END]] * 100) / 100
        drum = expected[:, IS_DRUM] > 0
        expected[drum, END] = expected[drum, START] + 0.01
        expected[:, PROGRAM] = np.where(drum, 0, map_program(expected[:, PROGRAM], granularity))
        order = np.lexsort([expected[:, c] for c in (PITCH, PROGRAM, IS_DRUM, START)])
        expected = expected[order]
        cols = [START, END, PITCH, PROGRAM, IS_DRUM]
        np.testing.assert_allclose(decoded.notes[:, cols], expected[:, cols], atol=1e-9)
        assert np.abs(decoded.notes[:, START] - track[order, START]).max() <= 0.005 + 1e-9


def test_piano_round_trip_keeps_velocities_without_ties() -> None:
    """The piano model's encoding (127 velocity bins, no tie section, 512-frame segments) and
    decoding: notes spanning segments carry on through the decoder's state, and every note
    comes back on the 10 ms grid with its MIDI velocity."""
    piano = MODEL_TYPES["ismir2021"]
    rng = np.random.default_rng(1)
    rows = []
    for pitch in (48, 60, 64, 67, 72):
        t = rng.uniform(0, 0.3)
        while t < 11.0:
            length = rng.uniform(0.05, 5.0)  # some notes span a 4.096 s segment boundary
            rows.append((t, t + length, pitch, rng.integers(1, 128), 0, 0))
            t += length + rng.uniform(0.0, 0.4)
    track = notes(*rows)
    track = track[track[:, END] < 12.2]  # inside the 3 segments (they cover up to 12.288 s)
    tokens = notes_to_segment_tokens(
        track, 3, "flat", piano.segment_frames, piano.codec, piano.ties
    )
    tie = piano.codec.encode_event("tie", 0) + 3
    assert all(tie not in t.tolist() and t[-1] == EOS_ID for t in tokens)
    origins = segment_origin_times(3, piano.segment_frames)
    assert origins.tolist() == [0.0, 4.09, 8.19]
    decoded = stitch_segments(tokens, origins, codec=piano.codec, ties=False)
    assert (decoded.invalid, decoded.dropped) == (0, 0)
    expected = track.copy()
    expected[:, [START, END]] = np.rint(expected[:, [START, END]] * 100) / 100
    expected = expected[np.lexsort([expected[:, c] for c in (PITCH, START)])]
    assert any(s < 4.09 < e for s, e in expected[:, [START, END]])  # crosses a boundary
    cols = [START, END, PITCH, VELOCITY]
    np.testing.assert_allclose(decoded.notes[:, cols], expected[:, cols], atol=1e-9)
    # MT3's vocabulary (1 bin) keeps only note-on/off: every onset decodes at velocity 127
    mt3 = stitch_segments(notes_to_segment_tokens(track, 3, "flat"))
    assert set(mt3.notes[:, VELOCITY]) == {127}
