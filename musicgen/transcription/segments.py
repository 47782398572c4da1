"""MT3 segments: where they start, their training targets, and stitching decoded segments.

Audio at 16 kHz is cut into frames of 128 samples and segments of 256 frames, so segment ``i``
starts at sample ``i * 32768`` (``i * 2.048`` s, computed from integer sample counts). A
segment's tokens count time from its *token origin*: the start rounded down to the 10 ms step,
``floor(start_sample * 100 / 16000)`` steps (MT3 rounds the decoding start time down the same
way). A segment holds the events whose rounded step lies between its origin and the next
segment's origin, which is how MT3 slices one track's event stream into segments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from musicgen.notes import END, START, TIED_END, TIED_START, crop_notes
from musicgen.transcription.tokenize import (
    DecodedNotes,
    NoteDecoder,
    notes_to_tokens,
    trim_overlapping_notes,
)
from musicgen.transcription.vocabulary import STEPS_PER_SECOND, Granularity

SAMPLE_RATE = 16_000
HOP_LENGTH = 128
SEGMENT_FRAMES = 256
SEGMENT_SAMPLES = SEGMENT_FRAMES * HOP_LENGTH  # 32768 samples, 2.048 s


def num_segments(n_frames: int) -> int:
    """Number of 256-frame segments needed to cover ``n_frames`` frames (the last may be short)."""
    return -(-n_frames // SEGMENT_FRAMES)


def segment_start_samples(n_segments: int) -> np.ndarray:
    """First sample of each segment: ``i * 256 * 128``."""
    return np.arange(n_segments, dtype=np.int64) * SEGMENT_SAMPLES


def segment_start_times(n_segments: int) -> np.ndarray:
    """Exact start of each segment in seconds (``i * 2.048``)."""
    return segment_start_samples(n_segments) / SAMPLE_RATE


def origin_step(start_sample: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Token origin of audio starting at ``start_sample``: its start rounded down to a 10 ms step."""
    return int(start_sample) * STEPS_PER_SECOND // sample_rate


def segment_origin_times(n_segments: int) -> np.ndarray:
    """Token origin of each segment in seconds, the start times to decode segments with."""
    steps = [origin_step(s) for s in segment_start_samples(n_segments)]
    return np.asarray(steps, dtype=np.float64) / STEPS_PER_SECOND


def _segment_notes(notes: np.ndarray, first: int, last: int) -> np.ndarray:
    """Notes of the events whose 10 ms step lies in ``[first, last)``, in seconds from step
    ``first``, with ``tied_start`` / ``tied_end`` set by :func:`musicgen.notes.crop_notes`.

    Before cropping, every time is pulled halfway towards the centre of its step (MT3 rounds
    ``t * 100`` half to even): steps and the order of events are kept, and no time is left
    near a half step, so cropping at half steps puts each event where MT3 puts it.
    """
    warped = np.array(notes, dtype=np.float64, copy=True)
    scaled = warped[:, [START, END]] * STEPS_PER_SECOND
    steps = np.rint(scaled)
    warped[:, [START, END]] = (steps + (scaled - steps) / 2) / STEPS_PER_SECOND
    half_step = 0.5 / STEPS_PER_SECOND
    lo, hi = first / STEPS_PER_SECOND - half_step, last / STEPS_PER_SECOND - half_step
    out = crop_notes(warped, lo, hi)
    out[:, [START, END]] -= half_step
    out[:, START] = np.where(out[:, TIED_START] > 0, 0.0, out[:, START])
    out[:, END] = np.where(out[:, TIED_END] > 0, (last - first) / STEPS_PER_SECOND, out[:, END])
    return out


def segment_tokens(
    notes: np.ndarray,
    start_sample: int,
    end_sample: int,
    granularity: Granularity = "full",
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Training target (model ids ending with ``EOS``) for the audio span
    ``[start_sample, end_sample)`` of a track whose notes are in track time; overlapping notes
    are trimmed first, as in MT3's training data."""
    first, last = origin_step(start_sample, sample_rate), origin_step(end_sample, sample_rate)
    return notes_to_tokens(_segment_notes(trim_overlapping_notes(notes), first, last), granularity)


def notes_to_segment_tokens(
    notes: np.ndarray, n_segments: int, granularity: Granularity = "full"
) -> list[np.ndarray]:
    """Targets for the first ``n_segments`` consecutive segments of a track (notes in track time)."""
    trimmed = trim_overlapping_notes(notes)
    origins = [origin_step(s) for s in segment_start_samples(n_segments + 1)]
    return [
        notes_to_tokens(_segment_notes(trimmed, origins[i], origins[i + 1]), granularity)
        for i in range(n_segments)
    ]


def stitch_segments(
    segment_tokens: Sequence[Sequence[int] | np.ndarray],
    start_times: Sequence[float] | np.ndarray | None = None,
    end_time: float | None = None,
) -> DecodedNotes:
    """Decode the token sequences of consecutive segments into one track's notes.

    ``start_times`` are the segments' token origins in seconds (default:
    :func:`segment_origin_times`). Segments are decoded in start order with one state, each
    cut off at the next one's start; notes sounding at a segment end continue when the next
    segment's tie section names them and end at its ``tie`` otherwise. Notes still sounding
    after the last segment end as in :meth:`NoteDecoder.finish`.
    """
    if start_times is None:
        start_times = segment_origin_times(len(segment_tokens))
    if len(start_times) != len(segment_tokens):
        raise ValueError(f"{len(segment_tokens)} segments but {len(start_times)} start times")
    order = np.argsort(np.asarray(start_times, dtype=np.float64), kind="stable")
    decoder = NoteDecoder()
    for rank, i in enumerate(order):
        max_time = float(start_times[order[rank + 1]]) if rank + 1 < len(order) else None
        decoder.decode_segment(segment_tokens[i], float(start_times[i]), max_time)
    return DecodedNotes(decoder.finish(end_time), decoder.invalid, decoder.dropped)
