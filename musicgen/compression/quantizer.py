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
3. Data parallelism. The package updates each rank's codebooks from that rank's batch, and
   ``DistributedDataParallel`` (``broadcast_buffers``) then copies rank 0's buffers over the
   others at the next forward: the codebooks learn from rank 0's batch alone, k-means starts
   from rank 0's batch, and dead codes are refilled from it. AudioCraft averages the buffers
   after each step instead (``flashy.distrib.sync_model``), which is not the union batch's
   update either (``mean(embed_avg_r / n_r) != sum(embed_avg_r) / sum(n_r)``). Here, when a
   process group is up, the per-code counts and vector sums are summed over ranks before the
   EMA, and k-means and dead-code refills draw from the rows of all ranks (then broadcast from
   rank 0): every rank makes the update one process would make on the union of the batches.
   Without a process group nothing changes (bit for bit).

Inference (``vq.encode``/``vq.decode``) and the state-dict layout are the package's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from encodec import distrib
from encodec.quantization import ResidualVectorQuantizer
from encodec.quantization.core_vq import (
    EuclideanCodebook,
    ema_inplace,
    laplace_smoothing,
    sample_vectors,
)

from musicgen.compression.ranks import gather_rows, sum_over_ranks


@dataclass
class QuantizerOutput:
    """Quantized latent ``(B, D, T)``, codes ``(B, K, T)`` and the mean commitment loss."""

    quantized: torch.Tensor
    codes: torch.Tensor
    commitment: torch.Tensor


class RevivingCodebook(EuclideanCodebook):
    """The package's codebook whose dead-code replacement survives the EMA update (fix 2) and
    whose training statistics cover every rank's batch (fix 3)."""

    def init_embed_(self, data: torch.Tensor) -> None:
        if self.inited:
            return
        super().init_embed_(gather_rows(data.detach()))  # k-means, then broadcast from rank 0

    def expire_codes_(self, batch_samples: torch.Tensor) -> None:
        if self.threshold_ema_dead_code == 0:
            return
        expired = self.cluster_size < self.threshold_ema_dead_code
        if not torch.any(expired):  # the same decision on every rank: the buffers agree
            return
        rows = gather_rows(batch_samples.reshape(-1, batch_samples.shape[-1]).detach())
        samples = sample_vectors(rows, self.codebook_size)
        self.embed.data.copy_(torch.where(expired[:, None], samples, self.embed))
        self.cluster_size.data.masked_fill_(expired, float(self.threshold_ema_dead_code))
        self.embed_avg.data.copy_(
            torch.where(expired[:, None], samples * self.threshold_ema_dead_code, self.embed_avg)
        )
        distrib.broadcast_tensors(self.buffers())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The package's forward with the counts and sums of the EMA update summed over ranks."""
        shape = x.shape
        x = self.preprocess(x)
        self.init_embed_(x)
        flat_ind = self.quantize(x)
        embed_ind = self.postprocess_emb(flat_ind, shape)
        quantize = self.dequantize(embed_ind)
        if self.training:
            self.expire_codes_(x)
            with torch.no_grad():
                onehot = F.one_hot(flat_ind, self.codebook_size).type(x.dtype)
                counts, sums = sum_over_ranks(onehot.sum(0), x.t() @ onehot)
                ema_inplace(self.cluster_size, counts, self.decay)
                ema_inplace(self.embed_avg, sums.t(), self.decay)
                smoothed = laplace_smoothing(self.cluster_size, self.codebook_size, self.epsilon)
                self.embed.copy_(self.embed_avg / (smoothed * self.cluster_size.sum())[:, None])
        return quantize, embed_ind


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
    counts = torch.zeros(flat.shape[0], bins, device=codes.device, dtype=torch.float).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float)
    )
    probs = counts / counts.sum(dim=1, keepdim=True)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
    return {
        "codebook_perplexity": entropy.exp().mean(),
        "codebook_usage": (counts > 0).float().mean(),
    }
