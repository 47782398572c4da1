"""Mixing augmentation for transcription training (not MT3): a crop gets another crop of its
batch added to its audio, and that crop's notes, moved to its time, added to its notes.

A training crop's label is its notes, so the sum of two crops is a new labelled example with
the union of their notes: the same instruments in combinations no track of the train split has.
A small model trained for many passes over a small train split learns those tracks' note
sequences instead of the audio (its validation loss rises while its training loss falls); the
mixed crops are new at every step.
"""

from __future__ import annotations

import numpy as np
import torch

from musicgen.notes import END, START, trim_overlapping_notes


def mix_partners(
    batch_size: int, probability: float, generator: torch.Generator | None = None
) -> list[int]:
    """For each crop of the batch, the index of the crop added to it, or -1 (kept as it is):
    each crop is mixed with probability ``probability``, with a partner drawn uniformly from
    the other crops of the batch (random numbers from ``generator``, default torch's global
    one, which ``seed`` sets)."""
    partners = []
    for i in range(batch_size):
        draw = torch.rand((), generator=generator).item()
        if batch_size < 2 or draw >= probability:
            partners.append(-1)
            continue
        other = int(torch.randint(batch_size - 1, (), generator=generator))
        partners.append(other + (other >= i))  # any index but i
    return partners


def mix_crops(
    audio: torch.Tensor,
    notes: list[torch.Tensor],
    starts: torch.Tensor,
    partners: list[int],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Crops ``audio`` (B, T) with notes in track time (``starts`` (B,) seconds) mixed with their
    ``partners`` (:func:`mix_partners`): crop ``i`` with partner ``j`` becomes ``audio[i] +
    audio[j]``, and its notes the union of its own and crop ``j``'s moved by ``starts[i] -
    starts[j]`` (the same offsets into the crop), same-pitch overlaps trimmed as in MT3's
    training data. Inputs are not modified."""
    mixed_audio = audio.clone()
    mixed_notes = list(notes)
    for i, j in enumerate(partners):
        if j < 0:
            continue
        mixed_audio[i] += audio[j]
        moved = notes[j].cpu().numpy().copy()
        moved[:, [START, END]] += float(starts[i]) - float(starts[j])
        union = np.concatenate([notes[i].cpu().numpy(), moved])
        mixed_notes[i] = torch.from_numpy(trim_overlapping_notes(union)).to(notes[i].dtype)
    return mixed_audio, mixed_notes
