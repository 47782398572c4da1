"""MT3's event codec and token vocabulary (magenta/mt3 ``vocabularies.py`` / ``event_codec.py``).

Codec ids are laid out as consecutive event ranges, every range starting at value 0:

=========  ===========  ==============================================================
event      codec ids    value
=========  ===========  ==============================================================
shift      0-1000       absolute 10 ms steps since the segment start (100 steps/s)
pitch      1001-1128    MIDI pitch of a pitched note-on/off
velocity   1129-1130    velocity bin; 1 bin, so 0 = note-off and 1 = note-on
tie        1131         end of the tie section that opens every segment
program    1132-1259    MIDI program of the following pitched events
drum       1260-1387    MIDI pitch of a drum hit (onset only)
=========  ===========  ==============================================================

Model ids are codec ids + 3, below which sit PAD 0, EOS 1 and UNK 2. MT3's vocabulary also
reserves T5's 100 extra ids, and its embedding table is rounded up to a multiple of 128:
``VOCAB_SIZE = 1536``. Token sequences in this package are model ids.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

STEPS_PER_SECOND = 100
MAX_SHIFT_STEPS = 1000  # 10 s
NUM_VELOCITY_BINS = 1
MAX_MIDI_VELOCITY = 127

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NUM_SPECIAL_IDS = 3
_T5_EXTRA_IDS = 100

Granularity = Literal["flat", "midi_class", "full"]
GRANULARITIES: tuple[Granularity, ...] = ("flat", "midi_class", "full")


@dataclass(frozen=True)
class Codec:
    """MT3's event codec with ``num_velocity_bins`` velocity bins: 1 for MT3 (the table in the
    module docstring), 127 for the ISMIR 2021 piano model (1514 codec ids, vocabulary 1664)."""

    num_velocity_bins: int = NUM_VELOCITY_BINS

    @cached_property
    def event_ranges(self) -> tuple[tuple[str, int], ...]:
        """(event type, number of values); each range starts at value 0."""
        return (
            ("shift", MAX_SHIFT_STEPS + 1),
            ("pitch", 128),
            ("velocity", self.num_velocity_bins + 1),
            ("tie", 1),
            ("program", 128),
            ("drum", 128),
        )

    @cached_property
    def _offsets(self) -> dict[str, int]:
        sizes = dict(self.event_ranges)
        return dict(zip(sizes, itertools.accumulate((0, *sizes.values())), strict=False))

    @property
    def num_codec_ids(self) -> int:
        return sum(size for _, size in self.event_ranges)

    @property
    def vocab_size(self) -> int:
        """Embedding rows: specials, codec ids and T5's 100 extra ids, rounded up to 128."""
        return 128 * math.ceil((NUM_SPECIAL_IDS + self.num_codec_ids + _T5_EXTRA_IDS) / 128)

    def codec_range(self, event_type: str) -> tuple[int, int]:
        """Inclusive ``(first, last)`` codec ids of an event type."""
        first = self._offsets[event_type]
        return first, first + dict(self.event_ranges)[event_type] - 1

    def encode_event(self, event_type: str, value: int) -> int:
        """Codec id of an event; ``ValueError`` when the value is outside the type's range."""
        if event_type not in self._offsets:
            raise ValueError(f"unknown event type {event_type!r}")
        size = dict(self.event_ranges)[event_type]
        if not 0 <= value < size:
            raise ValueError(f"{event_type} value {value} outside [0, {size - 1}]")
        return self._offsets[event_type] + int(value)

    def decode_event(self, codec_id: int) -> tuple[str, int]:
        """``(event type, value)`` of a codec id; ``ValueError`` outside ``[0, num_codec_ids)``."""
        if 0 <= codec_id < self.num_codec_ids:
            for name, size in self.event_ranges:
                if codec_id < self._offsets[name] + size:
                    return name, int(codec_id) - self._offsets[name]
        raise ValueError(f"codec id {codec_id} outside [0, {self.num_codec_ids})")


MT3_CODEC = Codec()
EVENT_RANGES = MT3_CODEC.event_ranges
NUM_CODEC_IDS = MT3_CODEC.num_codec_ids  # 1388
VOCAB_SIZE = MT3_CODEC.vocab_size  # 1536
codec_range = MT3_CODEC.codec_range
encode_event = MT3_CODEC.encode_event
decode_event = MT3_CODEC.decode_event


def token(event_type: str, value: int = 0) -> int:
    """Model id of an event (codec id + 3)."""
    return encode_event(event_type, value) + NUM_SPECIAL_IDS


def token_name(model_id: int) -> str:
    """Readable name of a model id, e.g. ``"pitch 60"``, ``"EOS"``, ``"invalid 1400"``."""
    special = {PAD_ID: "PAD", EOS_ID: "EOS", UNK_ID: "UNK"}
    if model_id in special:
        return special[model_id]
    try:
        name, value = decode_event(model_id - NUM_SPECIAL_IDS)
    except ValueError:
        return f"invalid {model_id}"
    return name if name == "tie" else f"{name} {value}"


def velocity_to_bin(velocity: int, num_bins: int = NUM_VELOCITY_BINS) -> int:
    """MT3's velocity bin: 0 for velocity 0 (note-off), else ``ceil(num_bins * v / 127)``."""
    if velocity == 0:
        return 0
    return math.ceil(num_bins * velocity / MAX_MIDI_VELOCITY)


def bin_to_velocity(velocity_bin: int, num_bins: int = NUM_VELOCITY_BINS) -> int:
    """MIDI velocity of a bin: 0 for bin 0, else ``int(127 * bin / num_bins)`` (127 with 1 bin)."""
    if velocity_bin == 0:
        return 0
    return int(MAX_MIDI_VELOCITY * velocity_bin / num_bins)


def map_program(program: int | np.ndarray, granularity: Granularity) -> int | np.ndarray:
    """Program under a granularity: ``flat`` -> 0, ``midi_class`` -> first program of its
    8-program class, ``full`` -> unchanged. Works on ints and integer-valued arrays."""
    if granularity == "flat":
        return program * 0
    if granularity == "midi_class":
        return 8 * (program // 8)
    if granularity == "full":
        return program
    raise ValueError(f"unknown program granularity {granularity!r}; use one of {GRANULARITIES}")
