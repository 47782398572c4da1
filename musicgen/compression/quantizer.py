"""The ``encodec`` package's residual vector quantizer with two training-time fixes.

1. Residual gradient. In ``encodec.quantization.core_vq.ResidualVectorQuantization.forward``
   each stage subtracts its straight-through output ``z + (q - z).detach()`` from the residual,
   so the next residual ``z - q`` carries no gradient and the commitment losses of every stage
   after the first never reach the encoder (facebookresearch/encodec issue #25). Here the
   residual is computed from the detached quantized value, and the straight-through estimator
   is applied once to the sum.
2. Dead-code replacement. ``EuclideanCodebook.forward`` replaces codes whose EMA cluster size
   fell under the threshold with batch vectors, then recomputes every code from its EMA
   statistics (``embed_avg / cluster_size``), which overwrites the replacements with stale,
   often huge, vectors: a dead code stays dead. Here a replaced code also gets its statistics
   reset (cluster size = threshold), so the replacement survives. With small batches (CPU
   presets) codebooks otherwise collapse to a handful of codes.

Inference (``vq.encode``/``vq.decode``) and the state-dict layout are the package's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from encodec import distrib
from encodec.quantization import ResidualVectorQuantizer
from encodec.quantization.core_vq import EuclideanCodebook, sample_vectors


@dataclass
class QuantizerOutput:
    """Quantized latent ``(B, D, T)``, codes ``(B, K, T)`` and the mean commitment loss."""

    quantized: torch.Tensor
    codes: torch.Tensor
    commitment: torch.Tensor


class RevivingCodebook(EuclideanCodebook):
    """The package's codebook whose dead-code replacement survives the EMA update (fix 2)."""

    def expire_codes_(self, batch_samples: torch.Tensor) -> None:
        if self.threshold_ema_dead_code == 0:
            return
        expired = self.cluster_size < self.threshold_ema_dead_code
        if not torch.any(expired):
            return
        samples = sample_vectors(
            batch_samples.reshape(-1, batch_samples.shape[-1]), self.codebook_size
        )
        self.embed.data.copy_(torch.where(expired[:, None], samples, self.embed))
        self.cluster_size.data.masked_fill_(expired, float(self.threshold_ema_dead_code))
        self.embed_avg.data.copy_(
            torch.where(expired[:, None], samples * self.threshold_ema_dead_code, self.embed_avg)
        )
        distrib.broadcast_tensors(self.buffers())


class FixedResidualVectorQuantizer(ResidualVectorQuantizer):
    """Drop-in subclass of the package's quantizer (same arguments and state-dict layout) with
    both fixes: ``forward`` detaches the residual and the codebooks are :class:`RevivingCodebook`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for layer in self.vq.layers:
            old = layer._codebook
            layer._codebook = RevivingCodebook(
                dim=self.dimension,
                codebook_size=self.bins,
                kmeans_init=self.kmeans_init,
                kmeans_iters=self.kmeans_iters,
                decay=self.decay,
                epsilon=old.epsilon,
                threshold_ema_dead_code=self.threshold_ema_dead_code,
            )

    def forward(self, x: torch.Tensor, n_q: int | None = None) -> QuantizerOutput:  # type: ignore[override]
        n_q = n_q or self.n_q
        residual = x
        quantized_out = torch.zeros_like(x)
        codes, losses = [], []
        for layer in self.vq.layers[:n_q]:
            quantized, indices, loss = layer(residual)
            quantized = quantized.detach()
            residual = residual - quantized
            quantized_out = quantized_out + quantized
            codes.append(indices)
            losses.append(loss)
        if self.training:
            quantized_out = x + (quantized_out - x).detach()
        return QuantizerOutput(quantized_out, torch.stack(codes, dim=1), torch.cat(losses).mean())

    def dead_codes(self) -> torch.Tensor:
        """Codes whose EMA cluster size is below the expiry threshold, summed over codebooks."""
        sizes = torch.stack([layer._codebook.cluster_size for layer in self.vq.layers])
        return (sizes < self.threshold_ema_dead_code).sum()


def codebook_stats(codes: torch.Tensor, bins: int) -> dict[str, torch.Tensor]:
    """Mean over codebooks of the perplexity and of the fraction of entries used in ``codes`` (B, K, T)."""
    flat = codes.transpose(0, 1).reshape(codes.shape[1], -1)
    counts = torch.zeros(flat.shape[0], bins, device=codes.device).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float)
    )
    probs = counts / counts.sum(dim=1, keepdim=True)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
    return {
        "codebook_perplexity": entropy.exp().mean(),
        "codebook_usage": (counts > 0).float().mean(),
    }
