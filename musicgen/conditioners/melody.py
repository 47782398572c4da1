"""Melody condition: the chromagram of the stemmed input, projected to the LM width.

``extract`` (stemmer, then :class:`ChromaExtractor`) is the one path that training, inference,
the chroma cache and the metrics share. ``duration_frames`` fixes the number of frames: longer
chroma is cropped, shorter chroma is looped (as MusicGen repeats a short melody).

``frame_hop`` (samples per condition frame) below the chroma ``hop`` repeats every chroma frame
onto that finer grid (each fine frame takes the chroma frame nearest in time). With the codec's
hop, the prefix holds one melody frame per LM step, so the frame of decoder step ``t`` sits a fixed
distance back; the chroma itself (and the chroma the metrics compare) is unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from musicgen.audio import loop_to_length
from musicgen.conditioners.chroma import ChromaExtractor
from musicgen.conditioners.stemmers import NoStemmer, Stemmer


def fit_frames(chroma: torch.Tensor, frames: int) -> torch.Tensor:
    """Crop ``chroma (B, F, n)`` to ``frames`` frames, or loop it until it has that many."""
    return loop_to_length(chroma, frames, dim=1)


class MelodyConditioner(nn.Module):
    """``forward(wav, stems=None, chroma=None, drop=None) -> (emb (B, F, output_dim), mask (B, F))``.

    ``chroma (B, F, n_chroma)``, when given (e.g. from the chroma cache), is used instead of
    stemming ``wav``. Rows with ``drop`` True are zero with mask False (and are not stemmed).
    """

    def __init__(
        self,
        output_dim: int,
        sample_rate: int,
        stemmer: Stemmer | None = None,
        n_chroma: int = 12,
        winlen: int = 2**14,
        hop: int = 2**12,
        duration_frames: int | None = None,
        frame_hop: int | None = None,
    ) -> None:
        super().__init__()
        if duration_frames is not None and duration_frames < 1:
            raise ValueError(f"duration_frames must be positive, got {duration_frames}")
        frame_hop = frame_hop or hop
        if frame_hop <= 0 or hop % frame_hop:
            raise ValueError(f"frame_hop {frame_hop} must divide the chroma hop {hop}")
        self.sample_rate, self.duration_frames = sample_rate, duration_frames
        self.frame_hop, self.upsample = frame_hop, hop // frame_hop
        self.stemmer: Stemmer = stemmer if stemmer is not None else NoStemmer()
        self.chroma = ChromaExtractor(sample_rate, n_chroma=n_chroma, winlen=winlen, hop=hop)
        self.proj = nn.Linear(n_chroma, output_dim)

    @property
    def n_chroma(self) -> int:
        return self.chroma.n_chroma

    @torch.no_grad()
    def stemmed_chroma(self, wav: torch.Tensor, stems: torch.Tensor | None = None) -> torch.Tensor:
        """Chroma ``(B, F, n_chroma)`` of the stemmed ``wav (B, C, T)`` (at ``sample_rate``), with
        F = ``chroma.num_frames(T)``."""
        return self.chroma(self.stemmer(wav, self.sample_rate, stems))

    def extract(self, wav: torch.Tensor, stems: torch.Tensor | None = None) -> torch.Tensor:
        """The condition's frames ``(B, F, n_chroma)``: :meth:`stemmed_chroma` on the
        ``frame_hop`` grid, fitted to ``duration_frames`` (when set)."""
        chroma = self.to_frames(self.stemmed_chroma(wav, stems))
        if self.duration_frames is None:
            return chroma[:, : self.num_frames(wav.shape[-1])]
        return fit_frames(chroma, self.duration_frames)

    def covered_chroma(self, wav: torch.Tensor, stems: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`stemmed_chroma` (at the chroma hop) over the span the condition covers: what
        the output of a melody-conditioned generation is compared with."""
        chroma = self.stemmed_chroma(wav, stems)
        if self.duration_frames is None:
            return chroma
        return fit_frames(chroma, math.ceil(self.duration_frames / self.upsample))

    def to_frames(self, chroma: torch.Tensor) -> torch.Tensor:
        """Chroma ``(B, F, n)`` at the chroma hop -> ``(B, F * upsample, n)`` on the
        ``frame_hop`` grid: fine frame ``i`` (centred at ``(i + 1/2) * frame_hop``) takes the
        chroma frame centred nearest to it (frame ``f`` is centred at ``f * hop``)."""
        if self.upsample == 1:
            return chroma
        fine = torch.arange(chroma.shape[1] * self.upsample, device=chroma.device)
        nearest = torch.div(2 * fine + 1 + self.upsample, 2 * self.upsample, rounding_mode="floor")
        return chroma[:, nearest.clamp(max=chroma.shape[1] - 1)]

    def num_frames(self, num_samples: int) -> int:
        """Frames of the condition for ``num_samples`` samples of audio."""
        if self.duration_frames:
            return self.duration_frames
        if self.upsample == 1:
            return self.chroma.num_frames(num_samples)
        return math.ceil(num_samples / self.frame_hop)

    def forward(
        self,
        wav: torch.Tensor | None = None,
        stems: torch.Tensor | None = None,
        chroma: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.proj.weight.device
        if chroma is not None:
            if chroma.dim() != 3 or chroma.shape[-1] != self.n_chroma:
                raise ValueError(
                    f"expected chroma (B, F, {self.n_chroma}), got {tuple(chroma.shape)}"
                )
            chroma = self.to_frames(chroma.to(device=device, dtype=torch.float32))
            if self.duration_frames is not None:
                chroma = fit_frames(chroma, self.duration_frames)
        elif wav is not None:
            keep = None if drop is None else (~drop.bool()).nonzero().flatten().to(wav.device)
            frames = self.num_frames(wav.shape[-1])
            chroma = wav.new_zeros(wav.shape[0], frames, self.n_chroma, dtype=torch.float32)
            if keep is None or keep.numel() == wav.shape[0]:
                chroma = self.extract(wav, stems)
            elif keep.numel() > 0:
                kept_stems = stems[keep] if stems is not None else None
                chroma[keep] = self.extract(wav[keep], kept_stems)
        else:
            raise ValueError("the melody condition needs wav or chroma")
        batch, frames = chroma.shape[:2]
        mask = torch.ones(batch, frames, dtype=torch.bool, device=device)
        if drop is not None:
            mask &= ~drop.to(device=device, dtype=torch.bool)[:, None]
        emb = self.proj(chroma.to(device=device, dtype=self.proj.weight.dtype)) * mask[..., None]
        return emb, mask
