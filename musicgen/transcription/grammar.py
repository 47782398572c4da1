"""Grammar-constrained decoding: mask the tokens that MT3's note decoding would reject.

MT3 decodes greedily and lets :class:`~musicgen.transcription.tokenize.NoteDecoder` count
and skip what contradicts the state (a shift back in time, a note-off of a silent pitch, a
drum hit with velocity 0, a second ``tie``). A well-trained model rarely emits those; a small
or early model does, and greedy decoding then falls into loops (the same onsets again and
again at one time step) that use up the token budget of the segment. :class:`TokenGrammar`
tracks, per row of a batch, the state a segment's tokens build up and forbids:

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

Everything a training target contains stays allowed, so a model that has learnt MT3's
grammar decodes the same tokens with or without it. Off by default (MT3's plain greedy).
"""

from __future__ import annotations

import torch

from musicgen.transcription.vocabulary import EOS_ID, NUM_SPECIAL_IDS, Granularity, codec_range

DRUM_REPEATS = 2


def max_repeats(granularity: Granularity) -> int:
    """How often one pitch may start (or be tied) at one step in targets of ``granularity``."""
    return 1 if granularity == "full" else 4


def _ids(event_type: str) -> tuple[int, int]:
    first, last = codec_range(event_type)
    return first + NUM_SPECIAL_IDS, last + NUM_SPECIAL_IDS + 1  # model ids, [start, stop)


SHIFT, PITCH, VELOCITY, TIE, PROGRAM, DRUM = (
    _ids(kind) for kind in ("shift", "pitch", "velocity", "tie", "program", "drum")
)


class TokenGrammar:
    """Decoding state of ``batch`` segments decoded side by side (each from its own start)."""

    def __init__(
        self,
        batch: int,
        vocab_size: int,
        granularity: Granularity = "full",
        device: torch.device | str = "cpu",
    ) -> None:
        def zeros(*shape: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
            return torch.zeros(batch, *shape, dtype=dtype, device=device)

        self.vocab_size, self.max_repeats = vocab_size, max_repeats(granularity)
        self.rows = torch.arange(batch, device=device)
        self.in_tie = torch.ones(batch, dtype=torch.bool, device=device)
        self.after_shift = zeros()
        self.step = zeros(dtype=torch.long)
        self.velocity = torch.ones(batch, dtype=torch.long, device=device)
        self.program = zeros(dtype=torch.long)
        # counts per (program, pitch): sounding notes, and those of them that started (or were
        # tied) at the current step
        self.sounding = zeros(128, 128, dtype=torch.int16)
        self.onset_now = zeros(128, 128, dtype=torch.int16)
        self.drum_now = zeros(128, dtype=torch.int16)
        self.shift_values = torch.arange(SHIFT[1] - SHIFT[0], device=device)

    def allowed(self) -> torch.Tensor:
        """``(batch, vocab_size)`` mask of the tokens allowed next."""
        allowed = torch.zeros(
            len(self.rows), self.vocab_size, dtype=torch.bool, device=self.rows.device
        )
        allowed[:, EOS_ID] = True
        allowed[:, VELOCITY[0] : VELOCITY[1]] = True
        allowed[:, PROGRAM[0] : PROGRAM[1]] = True
        allowed[:, TIE[0]] = self.in_tie
        forward = self.shift_values > self.step[:, None]
        allowed[:, SHIFT[0] : SHIFT[1]] = forward & ~(self.after_shift | self.in_tie)[:, None]
        sounding = self.sounding[self.rows, self.program] > 0
        room = self.onset_now[self.rows, self.program] < self.max_repeats
        note_off = (self.velocity == 0)[:, None]
        tie = self.in_tie[:, None]
        allowed[:, PITCH[0] : PITCH[1]] = torch.where(note_off & ~tie, sounding, room)
        allowed[:, DRUM[0] : DRUM[1]] = (self.drum_now < DRUM_REPEATS) & ~tie & ~note_off
        return allowed

    def update(self, tokens: torch.Tensor) -> None:
        """Advance every row by its chosen model id ``(batch,)``."""
        rows = self.rows

        def kind(ids: tuple[int, int]) -> torch.Tensor:
            return (tokens >= ids[0]) & (tokens < ids[1])

        shift, pitch, drum = kind(SHIFT), kind(PITCH), kind(DRUM)
        self.step = torch.where(shift, tokens - SHIFT[0], self.step)
        self.onset_now[shift] = 0
        self.drum_now[shift] = 0
        self.after_shift = shift
        self.velocity = torch.where(kind(VELOCITY), tokens - VELOCITY[0], self.velocity)
        self.program = torch.where(kind(PROGRAM), tokens - PROGRAM[0], self.program)
        self.in_tie &= tokens != TIE[0]
        at = (rows, self.program, (tokens - PITCH[0]).clamp(0, 127))
        note_on = pitch & (self.in_tie | (self.velocity > 0))
        note_off = pitch & ~note_on
        self.sounding[at] += note_on.short() - note_off.short()
        self.onset_now[at] = (self.onset_now[at] + note_on.short() - note_off.short()).clamp(min=0)
        self.drum_now[rows, (tokens - DRUM[0]).clamp(0, 127)] += drum.short()
