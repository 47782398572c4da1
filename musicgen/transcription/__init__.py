"""MT3 transcription: event vocabulary, notes <-> tokens, segments and stitching.

Typical use::

    targets = notes_to_segment_tokens(notes, n_segments)      # training targets, model ids
    decoded = stitch_segments(predicted_tokens_per_segment)   # -> DecodedNotes
    decoded.notes, decoded.invalid, decoded.dropped
"""

from musicgen.notes import trim_overlapping_notes
from musicgen.transcription.segments import (
    HOP_LENGTH,
    SAMPLE_RATE,
    SEGMENT_FRAMES,
    SEGMENT_SAMPLES,
    crop_tokens,
    notes_to_segment_tokens,
    num_segments,
    origin_step,
    segment_origin_times,
    segment_start_samples,
    segment_start_times,
    segment_tokens,
    stitch_segments,
    time_step,
)
from musicgen.transcription.tokenize import (
    DEFAULT_VELOCITY,
    DecodedNotes,
    NoteDecoder,
    notes_to_tokens,
    tokens_to_notes,
    window_tokens,
)
from musicgen.transcription.vocabulary import (
    EOS_ID,
    GRANULARITIES,
    MAX_SHIFT_STEPS,
    NUM_CODEC_IDS,
    NUM_SPECIAL_IDS,
    NUM_VELOCITY_BINS,
    PAD_ID,
    STEPS_PER_SECOND,
    UNK_ID,
    VOCAB_SIZE,
    Granularity,
    bin_to_velocity,
    codec_range,
    decode_event,
    encode_event,
    map_program,
    token,
    token_name,
    velocity_to_bin,
)

__all__ = [
    "DEFAULT_VELOCITY",
    "EOS_ID",
    "GRANULARITIES",
    "HOP_LENGTH",
    "MAX_SHIFT_STEPS",
    "NUM_CODEC_IDS",
    "NUM_SPECIAL_IDS",
    "NUM_VELOCITY_BINS",
    "PAD_ID",
    "SAMPLE_RATE",
    "SEGMENT_FRAMES",
    "SEGMENT_SAMPLES",
    "STEPS_PER_SECOND",
    "UNK_ID",
    "VOCAB_SIZE",
    "DecodedNotes",
    "Granularity",
    "NoteDecoder",
    "bin_to_velocity",
    "codec_range",
    "crop_tokens",
    "decode_event",
    "encode_event",
    "map_program",
    "notes_to_segment_tokens",
    "notes_to_tokens",
    "num_segments",
    "origin_step",
    "segment_origin_times",
    "segment_start_samples",
    "segment_start_times",
    "segment_tokens",
    "stitch_segments",
    "time_step",
    "token",
    "token_name",
    "tokens_to_notes",
    "trim_overlapping_notes",
    "velocity_to_bin",
    "window_tokens",
]
