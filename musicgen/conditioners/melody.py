"""Melody condition: the chromagram of the stemmed input, projected to the LM width.

``extract`` (stemmer, then :class:`ChromaExtractor`) is the one path that training, inference,
the chroma cache and the metrics share. ``duration_frames`` fixes the number of frames: longer
chroma is cropped, shorter chroma is looped (as MusicGen repeats a short melody).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from musicgen.conditioners.chroma import ChromaExtractor
from musicgen.conditioners.stemmers import NoStemmer, Stemmer


def fit_frames(chroma: torch.Tensor, frames: int) -> torch.Tensor:
    """Crop ``chroma (B, F, n)`` to ``frames`` frames, or loop it until it has that many."""
    if chroma.shape[1] == 0:
        raise ValueError("cannot fit an empty chromagram")
    repeats = math.ceil(frames / chroma.shape[1])
    return chroma.repeat(1, repeats, 1)[:, :frames]


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
    ) -> None:
        super().__init__()
        if duration_frames is not None and duration_frames < 1:
            raise ValueError(f"duration_frames must be positive, got {duration_frames}")
        self.sample_rate, self.duration_frames = sample_rate, duration_frames
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
        """:meth:`stemmed_chroma` fitted to ``duration_frames`` (when set)."""
        return self._fit(self.stemmed_chroma(wav, stems))

    def _fit(self, chroma: torch.Tensor) -> torch.Tensor:
        if self.duration_frames is None:
            return chroma
        return fit_frames(chroma, self.duration_frames)

    def num_frames(self, num_samples: int) -> int:
        """Frames of the condition for ``num_samples`` samples of audio."""
        return self.duration_frames or self.chroma.num_frames(num_samples)

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
            chroma = self._fit(chroma.to(device=device, dtype=torch.float32))
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
