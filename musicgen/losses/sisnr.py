"""Scale-invariant signal-to-noise ratio (Luo & Mesgarani 2019), used by EnCodec as a metric."""

from __future__ import annotations

import torch


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, epsilon: float = 1e-8) -> torch.Tensor:
    """SI-SNR in dB per batch item of ``(B, ...)`` signals (channels and time taken together)."""
    estimate = estimate.float().flatten(1)
    reference = reference.float().flatten(1)
    estimate = estimate - estimate.mean(dim=1, keepdim=True)
    reference = reference - reference.mean(dim=1, keepdim=True)
    scale = (estimate * reference).sum(dim=1, keepdim=True) / (
        reference.pow(2).sum(dim=1, keepdim=True) + epsilon
    )
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10(
        (target.pow(2).sum(dim=1) + epsilon) / (noise.pow(2).sum(dim=1) + epsilon)
    )


def si_snr_loss(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Negative mean SI-SNR, to minimise."""
    return -si_snr(estimate, reference).mean()
