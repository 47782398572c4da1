"""All conditions of a batch as one prefix for the LM: text tokens, then melody frames.

Dropping a condition (classifier-free guidance, melody dropout) zeroes its rows and clears their
mask but keeps the prefix length P, so conditional and null rows of one batch line up.

The released MusicGen-Melody reads its prefix otherwise (AudioCraft's ``prepend: [self_wav,
description]`` fuser, transformers' ``MusicgenMelodyForConditionalGeneration``): melody frames
then text tokens, every position attended (text padding and a dropped text are zero vectors), and
a dropped melody is the projected chroma of silence (one-hot bin 0 on every frame: AudioCraft's
chroma of its nullified one-sample wav, transformers' null ``input_features``). The converter
sets ``released_layout`` for that; our own models keep the default unless trained with
``solver.module.released_layout=true`` (what exporting a melody or prefix-text model needs).
"""

from __future__ import annotations

import torch
from torch import nn

from musicgen.conditioners.melody import MelodyConditioner
from musicgen.conditioners.text import TextConditioner
from musicgen.errors import UserError


class ConditionProvider(nn.Module):
    """``forward(captions, wav, stems, chroma, drop_text, drop_melody) -> (prefix, prefix_mask)``.

    ``prefix`` is ``(B, P, dim)`` with P = text tokens + melody frames, ``prefix_mask`` ``(B, P)``
    is True where a position carries a condition. A melody model called without ``wav`` or
    ``chroma`` must have its melody dropped for every row: it then contributes
    ``melody.duration_frames`` (or no) zero frames. With ``released_layout`` (see the module
    docstring) the prefix is ``[melody, text]``, the mask all True and a dropped melody the
    projected one-hot of chroma bin 0.
    """

    def __init__(
        self,
        text: TextConditioner | None = None,
        melody: MelodyConditioner | None = None,
        released_layout: bool = False,
    ) -> None:
        super().__init__()
        if text is None and melody is None:
            raise ValueError("ConditionProvider needs a text or a melody conditioner")
        if text is not None and melody is not None and text.output_dim != melody.proj.out_features:
            raise ValueError(
                f"text and melody project to different widths ({text.output_dim} and "
                f"{melody.proj.out_features})"
            )
        self.text, self.melody = text, melody
        self.released_layout = released_layout

    @property
    def dim(self) -> int:
        return self.text.output_dim if self.text is not None else self.melody.proj.out_features

    def forward(
        self,
        captions: list[str | None],
        wav: torch.Tensor | None = None,
        stems: torch.Tensor | None = None,
        chroma: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        drop_melody: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = len(captions)
        for name, value in (("drop_text", drop_text), ("drop_melody", drop_melody)):
            if value is not None and value.shape != (batch,):
                raise ValueError(f"{name} must have shape ({batch},), got {tuple(value.shape)}")
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.text is not None:
            emb, mask = self.text(captions)
            if drop_text is not None:
                keep = ~drop_text.to(device=mask.device, dtype=torch.bool)[:, None]
                emb, mask = emb * keep[..., None], mask & keep
            parts.append((emb, mask))
        if self.melody is not None:
            parts.append(self._melody(batch, wav, stems, chroma, drop_melody))
        if self.released_layout:
            parts.reverse()
        prefix = torch.cat([emb for emb, _ in parts], dim=1)
        mask = torch.cat([mask for _, mask in parts], dim=1)
        return prefix, mask.new_ones(mask.shape) if self.released_layout else mask

    def _silence(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Melody ``emb (B, F, dim)`` with its dropped rows (``mask`` False) set to the projected
        one-hot of chroma bin 0, the released models' null melody."""
        proj = self.melody.proj
        silence = proj.weight[:, 0] + (0.0 if proj.bias is None else proj.bias)
        return torch.where(mask[..., None], emb, silence.to(emb.dtype))

    def _melody(
        self,
        batch: int,
        wav: torch.Tensor | None,
        stems: torch.Tensor | None,
        chroma: torch.Tensor | None,
        drop: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        melody = self.melody
        assert melody is not None
        if wav is None and chroma is None:
            if drop is None or not bool(drop.all()):
                raise UserError(
                    "this model is melody-conditioned: pass a melody (or drop it for every item)"
                )
            weight = melody.proj.weight
            frames = melody.duration_frames or 0
            emb = weight.new_zeros(batch, frames, melody.proj.out_features)
            mask = torch.zeros(batch, frames, dtype=torch.bool, device=weight.device)
        else:
            size = (wav if chroma is None else chroma).shape[0]
            if size != batch:
                raise ValueError(f"{batch} captions but a melody batch of {size}")
            emb, mask = melody(wav, stems, chroma, drop)
        return (self._silence(emb, mask) if self.released_layout else emb), mask

    def null(
        self,
        captions: list[str | None],
        wav: torch.Tensor | None = None,
        stems: torch.Tensor | None = None,
        chroma: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The null condition of the same batch: every condition dropped, same P."""
        every = torch.ones(len(captions), dtype=torch.bool)
        return self(captions, wav, stems, chroma, drop_text=every, drop_melody=every)

    @staticmethod
    def cfg_dropout(
        batch_size: int, p_all: float, p_melody: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item ``(drop_text, drop_melody)`` as AudioCraft's dropouts combine: one uniform
        ``u`` per item drops every condition when ``u < p_all`` and the melody when
        ``u < p_melody``.

        AudioCraft's ``ClassifierFreeGuidanceDropout(p_all)`` and ``AttributeDropout({wav:
        {self_wav: p_melody}})`` each draw one number per training step from their own generator,
        both seeded 1234, so both see the same ``u``: the melody is dropped with
        ``max(p_all, p_melody)`` and, given the text kept, with
        ``(max(p_all, p_melody) - p_all) / (1 - p_all)`` (0.375 at 0.2 / 0.5), not ``p_melody``.
        AudioCraft draws once per batch (every item alike); we draw per item.
        """
        for name, p in (("p_all", p_all), ("p_melody", p_melody)):
            if not 0.0 <= p <= 1.0:
                raise UserError(f"{name} must be a probability in [0, 1], got {p}")
        draws = torch.rand(batch_size, generator=generator)
        drop_all = draws < p_all
        return drop_all, drop_all | (draws < p_melody)
