"""MT3 segments: where they start, their training targets, and stitching decoded segments.

Audio at 16 kHz is cut into frames of 128 samples and segments of 256 frames, so segment ``i``
starts at sample ``i * 32768`` (``i * 2.048`` s, computed from integer sample counts). A
segment's tokens count time from its *token origin*: the start rounded down to the 10 ms step,
``floor(start_sample * 100 / 16000)`` steps (MT3 rounds the decoding start time down the same
way). A segment holds the events whose rounded step lies between its origin and the next
segment's origin, which is how MT3 slices one track's event stream into segments.

Training crops start anywhere: :func:`crop_tokens` gives the target of a crop from its start
and end in seconds and the notes in track time, on the same grid (MT3's random chunks start on
its frame grid, where this is the same rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from musicgen.notes import trim_overlapping_notes
from musicgen.transcription.tokenize import DecodedNotes, NoteDecoder, window_tokens
from musicgen.transcription.vocabulary import MT3_CODEC, STEPS_PER_SECOND, Codec, Granularity

SAMPLE_RATE = 16_000
HOP_LENGTH = 128
SEGMENT_FRAMES = 256
SEGMENT_SAMPLES = SEGMENT_FRAMES * HOP_LENGTH  # 32768 samples, 2.048 s


def num_segments(n_frames: int, segment_frames: int = SEGMENT_FRAMES) -> int:
    """Number of segments needed to cover ``n_frames`` frames (the last may be short)."""
    return -(-n_frames // segment_frames)


def segment_start_samples(n_segments: int, segment_frames: int = SEGMENT_FRAMES) -> np.ndarray:
    """First sample of each segment: ``i * segment_frames * 128`` (``i * 256 * 128`` for MT3)."""
    return np.arange(n_segments, dtype=np.int64) * (segment_frames * HOP_LENGTH)


def segment_start_times(n_segments: int) -> np.ndarray:
    """Exact start of each segment in seconds (``i * 2.048``)."""
    return segment_start_samples(n_segments) / SAMPLE_RATE


def origin_step(start_sample: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Token origin of audio starting at ``start_sample``: its start rounded down to a 10 ms step."""
    return int(start_sample) * STEPS_PER_SECOND // sample_rate


def segment_origin_times(n_segments: int, segment_frames: int = SEGMENT_FRAMES) -> np.ndarray:
    """Token origin of each segment in seconds, the start times to decode segments with."""
    steps = [origin_step(s) for s in segment_start_samples(n_segments, segment_frames)]
    return np.asarray(steps, dtype=np.float64) / STEPS_PER_SECOND


def time_step(seconds: float) -> int:
    """The 10 ms step at or before ``seconds``. A time that is a whole number of samples at a
    rate up to 192 kHz lies on a step boundary or at least 5e-6 steps past one, so a float
    product a hair below a boundary (``0.29 * 100 = 28.999999999999996``) counts as on it."""
    return math.floor(seconds * STEPS_PER_SECOND + 1e-6)


def segment_tokens(
    notes: np.ndarray,
    start_sample: int,
    end_sample: int,
    granularity: Granularity = "full",
    sample_rate: int = SAMPLE_RATE,
    codec: Codec = MT3_CODEC,
    ties: bool = True,
) -> np.ndarray:
    """Training target (model ids ending with ``EOS``) for the audio span
    ``[start_sample, end_sample)`` of a track whose notes are in track time; overlapping notes
    are trimmed first, as in MT3's training data. ``codec``, ``ties``: see
    :func:`~musicgen.transcription.tokenize.window_tokens`."""
    first, last = origin_step(start_sample, sample_rate), origin_step(end_sample, sample_rate)
    trimmed = trim_overlapping_notes(notes)
    return window_tokens(trimmed, [first, last], granularity, codec, ties)[0]


def crop_tokens(
    notes: np.ndarray,
    start: float,
    end: float,
    granularity: Granularity = "full",
    codec: Codec = MT3_CODEC,
    ties: bool = True,
) -> np.ndarray:
    """Training target of the crop ``[start, end)`` (seconds in the track) from the crop's notes
    in track time, trimmed over the whole track (as :mod:`data.decode` cuts them)."""
    bounds = [time_step(start), time_step(end)]
    return window_tokens(notes, bounds, granularity, codec, ties)[0]


def notes_to_segment_tokens(
    notes: np.ndarray,
    n_segments: int,
    granularity: Granularity = "full",
    segment_frames: int = SEGMENT_FRAMES,
    codec: Codec = MT3_CODEC,
    ties: bool = True,
) -> list[np.ndarray]:
    """Targets for the first ``n_segments`` consecutive segments of ``segment_frames`` frames
    of a track (notes in track time)."""
    starts = segment_start_samples(n_segments + 1, segment_frames)
    origins = [origin_step(s) for s in starts]
    return window_tokens(trim_overlapping_notes(notes), origins, granularity, codec, ties)


def stitch_segments(
    segment_tokens: Sequence[Sequence[int] | np.ndarray],
    start_times: Sequence[float] | np.ndarray | None = None,
    end_time: float | None = None,
    codec: Codec = MT3_CODEC,
    ties: bool = True,
    log_probs: Sequence[Sequence[float] | np.ndarray] | None = None,
    min_onset_probability: float = 0.0,
) -> DecodedNotes:
    """Decode the token sequences of consecutive segments into one track's notes.

    ``start_times`` are the segments' token origins in seconds (default:
    :func:`segment_origin_times`). Segments are decoded in start order with one state, each
    cut off at the next one's start; notes sounding at a segment end continue when the next
    segment's tie section names them and end at its ``tie`` otherwise. Notes still sounding
    after the last segment end as in :meth:`NoteDecoder.finish`. ``codec``, ``ties`` and
    ``min_onset_probability`` (with ``log_probs``, the model's log-probability of each token of
    each segment): see :class:`NoteDecoder`.
    """
    if start_times is None:
        start_times = segment_origin_times(len(segment_tokens))
    if len(start_times) != len(segment_tokens):
        raise ValueError(f"{len(segment_tokens)} segments but {len(start_times)} start times")
    order = np.argsort(np.asarray(start_times, dtype=np.float64), kind="stable")
    decoder = NoteDecoder(codec, ties, min_onset_probability)
    for rank, i in enumerate(order):
        max_time = float(start_times[order[rank + 1]]) if rank + 1 < len(order) else None
        scores = None if log_probs is None else log_probs[i]
        decoder.decode_segment(segment_tokens[i], float(start_times[i]), max_time, scores)
    return DecodedNotes(decoder.finish(end_time), decoder.invalid, decoder.dropped, decoder.unsure)
