"""MS-STFT discriminator (the ``encodec`` package's) and EnCodec's adversarial losses (Sec. 3.4)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from encodec.msstftd import MultiScaleSTFTDiscriminator

Logits = list[torch.Tensor]
FeatureMaps = list[list[torch.Tensor]]


def ms_stft_discriminator(
    channels: int = 1, filters: int = 32, n_ffts: Sequence[int] = (1024, 2048, 512, 256, 128)
) -> MultiScaleSTFTDiscriminator:
    """One STFT sub-discriminator per window size, hop = window / 4 (5 scales by default)."""
    with warnings.catch_warnings():  # the package uses the deprecated torch.nn.utils.weight_norm
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        return MultiScaleSTFTDiscriminator(
            filters,
            in_channels=channels,
            n_ffts=list(n_ffts),
            win_lengths=list(n_ffts),
            hop_lengths=[n // 4 for n in n_ffts],
        )


def discriminator_hinge_loss(real: Logits, fake: Logits) -> torch.Tensor:
    """``1/K sum_k mean(max(0, 1 - D_k(x)) + max(0, 1 + D_k(x_hat)))``."""
    terms = [
        torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real, fake, strict=True)
    ]
    return torch.stack(terms).mean()


def generator_hinge_loss(fake: Logits) -> torch.Tensor:
    """``1/K sum_k mean(max(0, 1 - D_k(x_hat)))``."""
    return torch.stack([torch.relu(1 - f).mean() for f in fake]).mean()


def feature_scales(real: FeatureMaps) -> list[torch.Tensor]:
    """``mean|D(x)|`` of every discriminator layer (detached), in :func:`feature_matching_loss`'s order."""
    return [r.detach().abs().mean() for maps in real for r in maps]


def feature_matching_loss(
    real: FeatureMaps,
    fake: FeatureMaps,
    epsilon: float = 1e-8,
    scales: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Relative feature matching: mean over discriminators and layers of ``|D(x) - D(x_hat)|_1 / mean|D(x)|``.

    The real features are targets (detached). ``scales`` replaces the denominators
    (:func:`feature_scales` of this batch by default): data-parallel training passes the union
    batch's, as one process on the whole batch would use.
    """
    scales = feature_scales(real) if scales is None else scales
    reals, fakes = [r for maps in real for r in maps], [f for maps in fake for f in maps]
    terms = [
        (f - r.detach()).abs().mean() / (scale + epsilon)
        for r, f, scale in zip(reals, fakes, scales, strict=True)
    ]
    return torch.stack(terms).mean()
