"""Multi-scale mel spectrograms and EnCodec's multi-scale mel reconstruction loss (eq. 1)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn


class MultiScaleMel(nn.Module):
    """Mel magnitudes at windows ``2**i`` for ``i`` in ``scales`` (hop a quarter window, normalized STFT).

    ``n_mels`` is capped at the number of FFT bins of the window; at small windows some low
    filters are empty and give zero rows on both sides of a comparison.
    """

    def __init__(
        self, sample_rate: int, scales: Sequence[int] = range(5, 12), n_mels: int = 64
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*mel filterbank.*")
            self.transforms = nn.ModuleList(
                torchaudio.transforms.MelSpectrogram(
                    sample_rate,
                    n_fft=2**i,
                    win_length=2**i,
                    hop_length=2**i // 4,
                    n_mels=min(n_mels, 2 ** (i - 1) + 1),
                    power=1.0,
                    normalized=True,
                )
                for i in scales
            )

    def forward(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """One ``(B, C, mels, frames)`` float32 magnitude per scale of ``wav`` ``(B, C, T)``."""
        with torch.autocast(wav.device.type, enabled=False):
            return [transform(wav.float()) for transform in self.transforms]


def log_mel(mel: torch.Tensor, floor: float = 1e-5) -> torch.Tensor:
    return torch.log10(mel.clamp_min(floor))


class MultiScaleMelLoss(nn.Module):
    """Mean over scales of ``L1(S(x), S(x_hat)) + alpha * MSE(log S(x), log S(x_hat))``.

    The paper (eq. 1) combines L1 and L2 distances of 64-bin mel spectrograms at windows
    ``2**5 .. 2**11`` with ``alpha = 1``; it does not say how ``S`` is compressed, so the L1
    term compares magnitudes and the L2 term log10 magnitudes.
    """

    def __init__(
        self,
        sample_rate: int,
        scales: Sequence[int] = range(5, 12),
        n_mels: int = 64,
        alpha: float = 1.0,
    ) -> None:
        super().__init__()
        self.mel = MultiScaleMel(sample_rate, scales, n_mels)
        self.alpha = alpha

    def forward(self, estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        terms = [
            F.l1_loss(e, r) + self.alpha * F.mse_loss(log_mel(e), log_mel(r))
            for e, r in zip(self.mel(estimate), self.mel(reference), strict=True)
        ]
        return torch.stack(terms).mean()
