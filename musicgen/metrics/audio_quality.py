"""Objective codec quality: SI-SNR and multi-scale log-mel distance, one value per batch item."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from musicgen.losses.sisnr import si_snr
from musicgen.losses.spectral import MultiScaleMel, log_mel

__all__ = ["MelDistance", "si_snr"]


class MelDistance(nn.Module):
    """Mean absolute difference of log10 mel magnitudes (floor 1e-5), averaged over the scales
    of :class:`~musicgen.losses.spectral.MultiScaleMel` (64 mels, windows 2**5 .. 2**11)."""

    def __init__(
        self, sample_rate: int, scales: Sequence[int] = range(5, 12), n_mels: int = 64
    ) -> None:
        super().__init__()
        self.mel = MultiScaleMel(sample_rate, scales, n_mels)

    @torch.no_grad()
    def forward(self, estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``(B,)`` distances of ``(B, C, T)`` signals."""
        per_scale = [
            (log_mel(e) - log_mel(r)).abs().flatten(1).mean(dim=1)
            for e, r in zip(self.mel(estimate), self.mel(reference), strict=True)
        ]
        return torch.stack(per_scale).mean(dim=0)
