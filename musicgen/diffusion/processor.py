"""Band-wise energy equalisation of the data before diffusion (AudioCraft's ``MultiBandProcessor``).

The signal is split into ``n_bands`` mel bands; each band is centred and rescaled so that its
standard deviation matches that of white Gaussian noise in the same band, the rescaling taken to
the power ``power_std`` (1: full correction). The statistics are running sums over the first
``num_samples`` training items (buffers ``counts``, ``sum_x``, ``sum_x2``, ``sum_target_x2``, the
names of AudioCraft's state dict, beside the filters of ``split_bands``).
"""

from __future__ import annotations

import torch
from torch import nn

from musicgen.diffusion.bands import band_splitter


class SampleProcessor(nn.Module):
    """The identity (``processor.use: false``)."""

    def project_sample(
        self, x: torch.Tensor, noise: torch.Tensor | None = None, update: bool = True
    ) -> torch.Tensor:
        """``x`` in the space where diffusion happens."""
        return x

    def return_sample(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` back in the audio space."""
        return z


class MultiBandProcessor(SampleProcessor):
    """Per-band centring and rescaling toward Gaussian-noise energy (see the module docstring)."""

    def __init__(
        self,
        sample_rate: int,
        n_bands: int = 8,
        num_samples: int = 10_000,
        power_std: float | list[float] = 1.0,
    ) -> None:
        super().__init__()
        self.n_bands = n_bands
        self.num_samples = num_samples
        self.split_bands = band_splitter(sample_rate, n_bands)
        if isinstance(power_std, (list, tuple)) and len(power_std) != n_bands:
            raise ValueError(f"power_std has {len(power_std)} values for {n_bands} bands")
        self.power_std = (
            torch.tensor(power_std) if isinstance(power_std, (list, tuple)) else float(power_std)
        )
        self.register_buffer("counts", torch.zeros(1))
        self.register_buffer("sum_x", torch.zeros(n_bands))
        self.register_buffer("sum_x2", torch.zeros(n_bands))
        self.register_buffer("sum_target_x2", torch.zeros(n_bands))

    @property
    def fitted(self) -> bool:
        """Whether any statistics were gathered (before, the processor is the identity)."""
        return bool(self.counts.item() > 0)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum_x / self.counts

    @property
    def std(self) -> torch.Tensor:
        return (self.sum_x2 / self.counts - self.mean**2).clamp(min=0).sqrt()

    @property
    def target_std(self) -> torch.Tensor:
        # AudioCraft's value: the mean square of the noise bands (not its square root).
        return self.sum_target_x2 / self.counts

    def _power(self) -> torch.Tensor | float:
        p = self.power_std
        return p.to(self.counts) if isinstance(p, torch.Tensor) else p

    def project_sample(
        self, x: torch.Tensor, noise: torch.Tensor | None = None, update: bool = True
    ) -> torch.Tensor:
        """Equalised ``x`` (B, C, T); in training mode, until ``num_samples`` items were seen, the
        batch (and ``noise``, white noise like ``x``) first updates the statistics, unless
        ``update`` is off (a condition projected with the statistics of its target)."""
        bands = self.split_bands(x)
        if update and self.training and self.counts.item() < self.num_samples:
            ref_bands = self.split_bands(torch.randn_like(x) if noise is None else noise)
            self.counts += len(x)
            self.sum_x += bands.mean(dim=(2, 3)).sum(dim=1)
            self.sum_x2 += bands.pow(2).mean(dim=(2, 3)).sum(dim=1)
            self.sum_target_x2 += ref_bands.pow(2).mean(dim=(2, 3)).sum(dim=1)
        if not self.fitted:
            return x
        rescale = (self.target_std / self.std.clamp(min=1e-12)) ** self._power()
        bands = (bands - self.mean.view(-1, 1, 1, 1)) * rescale.view(-1, 1, 1, 1)
        return bands.sum(dim=0)

    def return_sample(self, z: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            return z
        bands = self.split_bands(z)
        rescale = (self.std / self.target_std) ** self._power()
        bands = bands * rescale.view(-1, 1, 1, 1) + self.mean.view(-1, 1, 1, 1)
        return bands.sum(dim=0)


def build_processor(sample_rate: int, use: bool = False, **options) -> SampleProcessor:
    """The processor a ``processor`` config describes (AudioCraft's keys; ``name``, when given,
    must be ``multi_band_processor``)."""
    name = options.pop("name", "multi_band_processor")
    if not use:
        return SampleProcessor()
    if name != "multi_band_processor":
        raise ValueError(f"unknown processor {name!r}: only multi_band_processor exists")
    return MultiBandProcessor(sample_rate, **options)
