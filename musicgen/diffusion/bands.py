"""Frequency bands in the waveform domain, as MultiBand Diffusion splits audio.

The split is ``julius.SplitBands`` (the one AudioCraft uses): a cascade of windowed-sinc
low-pass filters with cutoffs evenly spaced on the mel scale (or given in Hz); band ``i`` is
``lowpass(c_i+1) - lowpass(c_i)``, so the bands sum back to the input exactly (up to float
rounding): :func:`merge_bands` of :func:`split_bands` is the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import julius
import torch


def band_splitter(
    sample_rate: int, n_bands: int, cutoffs: Sequence[float] | None = None
) -> julius.SplitBands:
    """The module splitting ``(*, T)`` signals into ``(n_bands, *, T)`` bands (mel-spaced unless
    ``cutoffs`` in Hz are given: then ``len(cutoffs) + 1`` bands)."""
    if cutoffs is not None:
        if len(cutoffs) + 1 != n_bands:
            raise ValueError(f"{len(cutoffs)} cutoffs make {len(cutoffs) + 1} bands, not {n_bands}")
        return julius.SplitBands(sample_rate, cutoffs=list(cutoffs))
    return julius.SplitBands(sample_rate, n_bands=n_bands)


def split_bands(
    wav: torch.Tensor, sample_rate: int, n_bands: int, cutoffs: Sequence[float] | None = None
) -> torch.Tensor:
    """``wav`` (B, C, T) as ``(n_bands, B, C, T)`` bands, lowest first."""
    return band_splitter(sample_rate, n_bands, cutoffs).to(wav)(wav)


def merge_bands(bands: torch.Tensor) -> torch.Tensor:
    """The signal whose bands are ``bands`` (n_bands, ...): their sum."""
    return bands.sum(dim=0)


def re_eq(
    wav: torch.Tensor,
    ref: torch.Tensor,
    sample_rate: int,
    n_bands: int = 32,
    strictness: float = 1.0,
) -> torch.Tensor:
    """``wav`` with the level of each of ``n_bands`` mel bands matched to ``ref``'s (AudioCraft's
    ``MultiBandDiffusion.re_eq``: one gain per band over the whole batch, the ratio of standard
    deviations to the power ``strictness``; 0 leaves ``wav`` as it is)."""
    split = band_splitter(sample_rate, n_bands).to(wav)
    bands, bands_ref = split(wav), split(ref)
    out = torch.zeros_like(ref)
    for band, band_ref in zip(bands, bands_ref, strict=True):
        out += band * (band_ref.std() / band.std()) ** strictness
    return out
