"""General-MIDI programs per style and stem, the stem of a program, and words for captions.

Stems own disjoint program sets, so ``(program, is_drum)`` alone tells the stem of any
instrument in the dataset's MIDI files (see :func:`stem_for`).
"""

from __future__ import annotations

import pretty_midi

VOCAL_PROGRAMS = frozenset({52, 53, 54, 80, 81, 85})  # choir, voice, synth voice, leads
BASS_PROGRAMS = frozenset({32, 33, 35, 38, 43, 58})  # basses, contrabass, tuba

# style -> stem -> families of programs; an example picks one family for its "other" parts.
PALETTES: dict[str, dict[str, tuple[tuple[int, ...], ...]]] = {
    "chorale": {
        "vocals": ((52, 53, 54),),
        "bass": ((32, 43, 58),),
        "other": ((40, 41, 42, 48), (19,), (68, 70, 71, 73), (56, 57, 60, 61)),
    },
    "renaissance": {
        "vocals": ((52, 53),),
        "bass": ((43, 58, 32),),
        "other": ((74, 68, 70, 73), (40, 41, 42, 48), (19,), (57, 60)),
    },
    "quartet": {
        "vocals": ((52, 53, 54, 85),),
        "bass": ((43, 32, 35),),
        "other": ((40, 41, 42, 48), (68, 71, 73, 70), (0,), (6,)),
    },
    "folk": {
        "vocals": ((53, 54, 85, 80, 81),),
        "bass": ((32, 33, 35, 38),),
        "other": ((24, 25), (0, 4), (21,), (16,), (46,), (48, 89)),
    },
}
# Written range (lowest, highest MIDI pitch) of every palette program: parts are moved by
# octaves into it, since some soundfont presets are silent beyond their real instrument's range.
RANGES = {
    0: (21, 108), 4: (28, 103), 6: (29, 89), 16: (24, 96), 19: (24, 96), 21: (41, 89),
    24: (40, 88), 25: (40, 88), 32: (28, 67), 33: (28, 67), 35: (28, 67), 38: (24, 72),
    40: (55, 93), 41: (48, 88), 42: (36, 76), 43: (28, 55), 46: (24, 103), 48: (28, 96),
    52: (40, 84), 53: (40, 84), 54: (36, 96), 56: (52, 82), 57: (40, 72), 58: (28, 65),
    60: (41, 77), 61: (36, 84), 68: (58, 91), 70: (34, 75), 71: (50, 91), 73: (60, 96),
    74: (60, 96), 80: (36, 96), 81: (36, 96), 85: (36, 96), 89: (36, 96),
}  # fmt: skip
# Chord parts of accompanied tunes on these programs are struck on every beat, not held.
PLUCKED_PROGRAMS = frozenset({0, 4, 6, 24, 25, 46})

_WORDS = {
    0: "piano", 4: "electric piano", 6: "harpsichord", 16: "organ", 19: "organ",
    21: "accordion", 24: "nylon guitar", 25: "acoustic guitar", 32: "upright bass",
    33: "electric bass", 35: "fretless bass", 38: "synth bass", 40: "violin", 41: "viola",
    42: "cello", 43: "double bass", 46: "harp", 48: "strings", 52: "choir", 53: "voices",
    54: "synth voice", 56: "trumpet", 57: "trombone", 58: "tuba", 60: "horn", 61: "brass",
    68: "oboe", 70: "bassoon", 71: "clarinet", 73: "flute", 74: "recorders",
    80: "square lead", 81: "saw lead", 85: "voice lead", 89: "warm pad",
}  # fmt: skip
_GROUPS = {
    "strings": frozenset({40, 41, 42, 48}),
    "woodwinds": frozenset({68, 70, 71, 73, 74}),
    "brass": frozenset({56, 57, 60, 61}),
}


def stem_for(program: int, is_drum: bool) -> str:
    """The MUSDB-style stem an instrument of this dataset belongs to."""
    if is_drum:
        return "drums"
    if program in VOCAL_PROGRAMS:
        return "vocals"
    return "bass" if program in BASS_PROGRAMS else "other"


def program_name(program: int, is_drum: bool) -> str:
    return "Drums" if is_drum else pretty_midi.program_to_instrument_name(program)


def instrument_words(programs: list[int], has_drums: bool) -> list[str]:
    """Caption words in order of appearance; two or more members of a family become its name."""
    words: list[str] = []
    for program in programs:
        group = next((g for g, members in _GROUPS.items() if program in members), None)
        many = group is not None and len({p for p in programs if p in _GROUPS[group]}) > 1
        word = group if many else _WORDS.get(program, program_name(program, False).lower())
        if word not in words:
            words.append(word)
    return [*words, "drums"] if has_drums else words
