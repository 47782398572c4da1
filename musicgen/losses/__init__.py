"""Training losses of the EnCodec recipe (pure PyTorch)."""

from musicgen.losses.adversarial import (
    discriminator_hinge_loss,
    feature_matching_loss,
    feature_scales,
    generator_hinge_loss,
    ms_stft_discriminator,
)
from musicgen.losses.balancer import Balancer
from musicgen.losses.sisnr import si_snr, si_snr_loss
from musicgen.losses.spectral import MultiScaleMel, MultiScaleMelLoss, log_mel

__all__ = [
    "Balancer",
    "MultiScaleMel",
    "MultiScaleMelLoss",
    "discriminator_hinge_loss",
    "feature_matching_loss",
    "feature_scales",
    "generator_hinge_loss",
    "log_mel",
    "ms_stft_discriminator",
    "si_snr",
    "si_snr_loss",
]
