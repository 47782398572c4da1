"""FAD from embedding sums kept in a dict of float64 tensors: the sums add up over batches and,
reduced with :func:`solvers.reduction.sum_tensors`, over processes, so the score is the same on any
number of processes. Keys: ``fad_sum:<clips>``, ``fad_outer:<clips>``, ``fad_n:<clips>`` (embedding
frames) and ``items:<clips>`` (clips)."""

from __future__ import annotations

import numpy as np
import torch

from musicgen.errors import UserError
from musicgen.metrics.embeddings import AudioEmbedder, build_embedder
from musicgen.metrics.fad import frechet_distance


def configured_embedder(evaluation: dict) -> AudioEmbedder:
    """The FAD embedder of a solver's ``evaluation`` options (``fad_embedder``, ``fad_weights``,
    ``fad_options``)."""
    return build_embedder(
        evaluation["fad_embedder"], evaluation["fad_weights"], **evaluation["fad_options"]
    )


def add_sum(sums: dict[str, torch.Tensor], key: str, value: torch.Tensor, device) -> None:
    """``sums[key] += value`` (float64 on ``device``, the device the reduction runs on)."""
    value = value.double().to(device)
    sums[key] = sums[key] + value if key in sums else value


def add_clip_embeddings(
    sums: dict[str, torch.Tensor],
    key: str,
    embedder: AudioEmbedder,
    wavs: torch.Tensor,
    lengths: list[int],
    sample_rate: int,
    device,
) -> None:
    """Add the sum, sum of outer products and count of the embeddings of each clip ``wavs[i]``
    (its first ``lengths[i]`` samples), and the number of clips, under ``key``."""
    for wav, length in zip(wavs, lengths, strict=True):
        emb = torch.as_tensor(embedder.embed(wav[..., :length].float().cpu(), sample_rate))
        emb = emb.double()
        add_sum(sums, f"fad_sum:{key}", emb.sum(0), device)
        add_sum(sums, f"fad_outer:{key}", emb.T @ emb, device)
        add_sum(sums, f"fad_n:{key}", torch.tensor(float(emb.shape[0])), device)
    add_sum(sums, f"items:{key}", torch.tensor(float(len(lengths))), device)


def gaussian(sums: dict[str, torch.Tensor], key: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean, covariance and number of the embeddings summed under ``key``."""
    total, outer = sums[f"fad_sum:{key}"], sums[f"fad_outer:{key}"]
    n = int(sums[f"fad_n:{key}"].item())
    if n < 2:
        raise UserError(
            f"FAD needs at least 2 embeddings of the {key} clips, got {n}: evaluate more items"
        )
    mu = total / n
    sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
    return mu.cpu().numpy(), sigma.cpu().numpy(), n


def fad(sums: dict[str, torch.Tensor], key: str, reference: str = "reference") -> float:
    """FAD between the clips summed under ``key`` and those under ``reference``."""
    mu1, s1, _ = gaussian(sums, key)
    mu2, s2, _ = gaussian(sums, reference)
    return frechet_distance(mu1, s1, mu2, s2)
