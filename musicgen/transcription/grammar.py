"""Grammar-constrained decoding: mask the tokens that MT3's note decoding would reject.

MT3 decodes greedily and lets :class:`~musicgen.transcription.tokenize.NoteDecoder` count
and skip what contradicts the state (a shift back in time, a note-off of a silent pitch, a
drum hit with velocity 0, a second ``tie``). A well-trained model rarely emits those; a small
or early model does, and greedy decoding then falls into loops (the same onsets again and
again at one time step) that use up the token budget of the segment. :class:`TokenGrammar`
tracks, per row of a batch, the state a segment's tokens build up and masks what a target of
the model's token format (:class:`GrammarSpec`) never holds.

MT3's format (``ties``: a tie section opens every segment) forbids, as it always has:

* a shift in the tie section, one that does not move forward, or one directly after another
  shift (a 2.048 s segment never needs two: shifts count up to 10 s);
* ``tie`` after the tie section;
* in the tie section, a pitch tied ``max_repeats`` times already; after it, a note-off of a
  pitch that is not sounding, and more than ``max_repeats`` notes of one (program, pitch)
  started and still sounding at one time step, or more than two drum hits of one pitch at
  one step (drums are never trimmed: two hits within 10 ms both stay in a target). With ``full`` programs a target never repeats one (overlapping
  notes are trimmed): ``max_repeats`` 1; coarser granularities merge instruments, so two
  parts may share a pitch: 4 (see :func:`max_repeats`);
* drum hits while the velocity is 0; PAD, UNK and the unused ids above the codec range.

The piano format of Hawthorne et al. 2021 (no ties; 127 velocity bins; ``flat``: no program
tokens) keeps the step, repeat, drum and id rules above and, since a segment names no state
of its own, follows what MT3's encoder writes at the start of every segment (state reset, then
only changes) more closely:

* no ``tie``; shifts from the first token on, each at most ``max_shift`` steps (the last step
  of a segment: 409 for 512 frames, :func:`segment_max_shift`);
* pitches and drums only once a velocity token has set the velocity in the segment (and a
  program token the program, unless ``flat``); no program tokens with ``flat``;
* a velocity or program token never repeats the current value and is followed by a note
  (velocity: a pitch or drum; program: a velocity or pitch), a shift by an event: EOS,
  shifts and further state tokens wait until then;
* a note-off of a (program, pitch) with no note of the segment sounding only while fewer
  than ``max_repeats`` notes begun before the segment have ended in it (with ``full``
  programs, and only before the segment starts one of its own: targets end a note before the
  next of its pitch starts).

These rules would hold for MT3's targets too; MT3's format keeps its first grammar so that its
decoded tokens stay as they were. Everything a training target contains stays allowed, so a
model that has learnt its format decodes the same tokens with or without the grammar. Off by
default (MT3's plain greedy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from musicgen.transcription.segments import HOP_LENGTH, SAMPLE_RATE
from musicgen.transcription.vocabulary import (
    EOS_ID,
    MT3_CODEC,
    NUM_SPECIAL_IDS,
    STEPS_PER_SECOND,
    Codec,
    Granularity,
)

DRUM_REPEATS = 2


def max_repeats(granularity: Granularity) -> int:
    """How often one pitch may start (or be tied) at one step in targets of ``granularity``."""
    return 1 if granularity == "full" else 4


def segment_max_shift(segment_frames: int) -> int:
    """The largest shift in a target of ``segment_frames`` frames: its window spans at most
    ``ceil(seconds * 100)`` steps (the 10 ms steps of its start and end, rounded down) and its
    events lie before the last one."""
    return math.ceil(segment_frames * HOP_LENGTH * STEPS_PER_SECOND / SAMPLE_RATE) - 1


@dataclass(frozen=True)
class GrammarSpec:
    """The token format a model was trained on: program ``granularity``, event ``codec``,
    whether segments open with a tie section (``ties``), and the largest shift of a segment
    (``max_shift``; ``None``: the codec's 1000 steps)."""

    granularity: Granularity = "full"
    codec: Codec = MT3_CODEC
    ties: bool = True
    max_shift: int | None = None


class TokenGrammar:
    """Decoding state of ``batch`` segments decoded side by side (each from its own start);
    ``spec`` is a :class:`GrammarSpec` or, for MT3's format, a program granularity."""

    def __init__(
        self,
        batch: int,
        vocab_size: int,
        spec: Granularity | GrammarSpec = "full",
        device: torch.device | str = "cpu",
    ) -> None:
        spec = GrammarSpec(spec) if isinstance(spec, str) else spec

        def zeros(*shape: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
            return torch.zeros(batch, *shape, dtype=dtype, device=device)

        def ids(kind: str) -> tuple[int, int]:
            first, last = spec.codec.codec_range(kind)
            return first + NUM_SPECIAL_IDS, last + NUM_SPECIAL_IDS + 1  # model ids, [start, stop)

        self.spec, self.vocab_size, self.max_repeats = (
            spec,
            vocab_size,
            max_repeats(spec.granularity),
        )
        self.shift, self.pitch, self.velocity_ids, self.tie, self.program_ids, self.drum = (
            ids(kind) for kind in ("shift", "pitch", "velocity", "tie", "program", "drum")
        )
        self.rows = torch.arange(batch, device=device)
        self.in_tie = torch.full((batch,), spec.ties, dtype=torch.bool, device=device)
        self.after_shift, self.after_velocity, self.after_program = zeros(), zeros(), zeros()
        self.step = zeros(dtype=torch.long)
        # MT3's format starts as if a note-on velocity were set; the piano format sets it in
        # every segment (-1: not yet), and the program too unless ``flat``
        velocity = 1 if spec.ties else -1
        program = 0 if spec.ties or spec.granularity == "flat" else -1
        self.velocity = torch.full((batch,), velocity, dtype=torch.long, device=device)
        self.program = torch.full((batch,), program, dtype=torch.long, device=device)
        # counts per (program, pitch): sounding notes, those of them that started (or were
        # tied) at the current step, and (piano format) how many notes begun before the
        # segment may still end in it
        self.sounding = zeros(128, 128, dtype=torch.int16)
        self.carried = zeros(128, 128, dtype=torch.int16)
        if not spec.ties:
            self.carried += self.max_repeats
        self.onset_now = zeros(128, 128, dtype=torch.int16)
        self.drum_now = zeros(128, dtype=torch.int16)
        self.shift_values = torch.arange(self.shift[1] - self.shift[0], device=device)
        self.value_128 = torch.arange(128, device=device)

    def allowed(self) -> torch.Tensor:
        """``(batch, vocab_size)`` mask of the tokens allowed next."""
        allowed = torch.zeros(
            len(self.rows), self.vocab_size, dtype=torch.bool, device=self.rows.device
        )
        program = self.program.clamp(min=0)
        sounding = self.sounding[self.rows, program]
        room = self.onset_now[self.rows, program] < self.max_repeats
        note_off = (self.velocity == 0)[:, None]
        forward = self.shift_values > self.step[:, None]
        if self.spec.max_shift is not None:
            forward &= self.shift_values <= self.spec.max_shift
        drums = self.drum_now < DRUM_REPEATS
        shift, pitch, drum = self.shift, self.pitch, self.drum
        velocity, programs = self.velocity_ids, self.program_ids
        if self.spec.ties:
            tie = self.in_tie[:, None]
            allowed[:, EOS_ID] = True
            allowed[:, velocity[0] : velocity[1]] = True
            allowed[:, programs[0] : programs[1]] = True
            allowed[:, self.tie[0]] = self.in_tie
            allowed[:, shift[0] : shift[1]] = forward & ~(self.after_shift | self.in_tie)[:, None]
            allowed[:, pitch[0] : pitch[1]] = torch.where(note_off & ~tie, sounding > 0, room)
            allowed[:, drum[0] : drum[1]] = drums & ~tie & ~note_off
            return allowed
        free = ~(self.after_shift | self.after_velocity | self.after_program)[:, None]
        allowed[:, EOS_ID] = free[:, 0]
        allowed[:, shift[0] : shift[1]] = forward & free
        bins = torch.arange(velocity[1] - velocity[0], device=self.rows.device)
        allowed[:, velocity[0] : velocity[1]] = (bins != self.velocity[:, None]) & ~(
            self.after_velocity[:, None]
        )
        state_next = (self.after_velocity | self.after_program)[:, None]
        if self.spec.granularity != "flat":
            changes = self.value_128 != self.program[:, None]
            allowed[:, programs[0] : programs[1]] = changes & ~state_next
        ready = ((self.velocity >= 0) & (self.program >= 0))[:, None]
        ending = (sounding > 0) | (self.carried[self.rows, program] > 0)
        allowed[:, pitch[0] : pitch[1]] = ready & torch.where(note_off, ending, room)
        onset = (self.velocity > 0)[:, None] & ~self.after_program[:, None]
        allowed[:, drum[0] : drum[1]] = drums & onset
        allowed[:, EOS_ID] |= ~allowed.any(dim=1)  # never a dead end
        return allowed

    def update(self, tokens: torch.Tensor) -> None:
        """Advance every row by its chosen model id ``(batch,)``."""
        rows = self.rows

        def kind(ids: tuple[int, int]) -> torch.Tensor:
            return (tokens >= ids[0]) & (tokens < ids[1])

        shift, pitch, drum = kind(self.shift), kind(self.pitch), kind(self.drum)
        velocity, program = kind(self.velocity_ids), kind(self.program_ids)
        self.step = torch.where(shift, tokens - self.shift[0], self.step)
        self.onset_now[shift] = 0
        self.drum_now[shift] = 0
        self.after_shift, self.after_velocity, self.after_program = shift, velocity, program
        self.velocity = torch.where(velocity, tokens - self.velocity_ids[0], self.velocity)
        self.program = torch.where(program, tokens - self.program_ids[0], self.program)
        self.in_tie &= tokens != self.tie[0]
        at = (rows, self.program.clamp(min=0), (tokens - self.pitch[0]).clamp(0, 127))
        note_on = pitch & (self.in_tie | (self.velocity > 0))
        note_off = pitch & ~note_on
        # a note-off ends a note of the segment if one sounds, else one carried into it; with
        # full programs an onset ends the carried note too (targets end it first)
        of_segment = self.sounding[at] > 0
        self.carried[at] -= (note_off & ~of_segment).short()
        if self.max_repeats == 1:
            self.carried[at] *= (~note_on).short()
        self.sounding[at] += note_on.short() - (note_off & of_segment).short()
        self.onset_now[at] = (self.onset_now[at] + note_on.short() - note_off.short()).clamp(min=0)
        self.drum_now[rows, (tokens - self.drum[0]).clamp(0, 127)] += drum.short()
