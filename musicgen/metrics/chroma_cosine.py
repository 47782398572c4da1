"""Chroma cosine similarity between a melody condition and the generated audio.

As AudioCraft's ``ChromaCosineSimilarityMetric``: for each item, the cosine similarity of the two
chromagrams frame by frame over the item's valid frames (``ceil(samples / hop)``), summed; the
metric is the sum over all items divided by the total number of frames, so long items weigh more
than short ones. Frames where either chroma is all zero count with similarity 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-8


def frames_for_samples(samples: int, hop: int) -> int:
    """Valid chroma frames of ``samples`` audio samples at hop ``hop`` (AudioCraft: ``ceil``)."""
    return math.ceil(samples / hop)


class ChromaCosineSimilarity:
    """Frame-weighted mean cosine similarity, accumulated over batches."""

    def __init__(self, eps: float = EPS) -> None:
        self.eps = eps
        self.cosine_sum = 0.0
        self.frames = 0

    def update(
        self,
        chroma_ref: torch.Tensor,
        chroma_out: torch.Tensor,
        lengths: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        """Add ``(B, F, n_chroma)`` pairs; ``lengths``: each item's valid frames (default F)."""
        if chroma_ref.dim() != 3 or chroma_ref.shape[0] != chroma_out.shape[0]:
            raise ValueError(
                f"expected chroma of shape (B, F, n_chroma), got {tuple(chroma_ref.shape)} "
                f"and {tuple(chroma_out.shape)}"
            )
        if chroma_ref.shape[2] != chroma_out.shape[2]:
            raise ValueError(f"chroma bins differ: {chroma_ref.shape[2]} vs {chroma_out.shape[2]}")
        batch = chroma_ref.shape[0]
        common = min(chroma_ref.shape[1], chroma_out.shape[1])
        if lengths is None:
            lengths = [common] * batch
        lengths = [int(n) for n in lengths]
        if len(lengths) != batch or any(n < 0 or n > common for n in lengths):
            raise ValueError(
                f"lengths {lengths} must give 0..{common} frames for each of {batch} items"
            )
        cosine = F.cosine_similarity(
            chroma_ref[:, :common].double(), chroma_out[:, :common].double(), dim=-1, eps=self.eps
        )
        valid = (
            torch.arange(common, device=cosine.device)
            < torch.tensor(lengths, device=cosine.device)[:, None]
        )
        self.cosine_sum += float(cosine[valid].sum())
        self.frames += sum(lengths)

    def compute(self) -> float:
        if self.frames == 0:
            raise ValueError(
                "chroma cosine similarity of zero frames: update with some chroma first"
            )
        return self.cosine_sum / self.frames


def chroma_cosine_similarity(
    chroma_ref: torch.Tensor,
    chroma_out: torch.Tensor,
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> float:
    """Frame-weighted mean cosine similarity of ``(B, F, n_chroma)`` chroma pairs."""
    metric = ChromaCosineSimilarity()
    metric.update(chroma_ref, chroma_out, lengths)
    return metric.compute()
