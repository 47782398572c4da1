"""Fréchet Audio Distance: the Fréchet distance between Gaussians fitted to two embedding sets.

``FAD = |mu_a - mu_b|^2 + Tr S_a + Tr S_b - 2 Tr sqrt(S_a S_b)`` (Kilgour et al., 2019), computed
in float64. The matrix square root is ``scipy.linalg.sqrtm``; as in the reference implementations
(google-research ``frechet_audio_distance``, ``pytorch-fid``), a non-finite root is retried with
``eps`` added to both diagonals, and a negligible imaginary part from round-off is dropped. FAD is
biased by the number of embeddings, so every result carries the sample count of each set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from musicgen.errors import UserError

ArrayLike = np.ndarray | torch.Tensor
IMAGINARY_TOLERANCE = 1e-3  # largest |imag| on the root's diagonal accepted as round-off


def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class GaussianStats:
    """Mean ``(D,)``, covariance ``(D, D)`` and sample count of an embedding set."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    def save(self, path: str | Path) -> Path:
        """Write ``mu``, ``sigma`` and ``n`` to ``.npz`` (to cache a reference set's stats)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            np.savez(handle, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))
        return path

    @classmethod
    def load(cls, path: str | Path) -> GaussianStats:
        """Stats written by :meth:`save` (read without pickle)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["mu"], data["sigma"], int(data["n"]))
        except (OSError, KeyError, ValueError) as err:
            raise UserError(
                f"cannot read embedding stats from {path} ({err}): "
                "recompute them with GaussianStats.save"
            ) from err


def embedding_stats(emb: ArrayLike) -> GaussianStats:
    """Gaussian fit of ``(N, D)`` embeddings: mean and unbiased covariance, in float64."""
    x = _as_float64(emb)
    if x.ndim != 2:
        raise ValueError(f"expected embeddings of shape (N, D), got {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 embeddings, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return GaussianStats(x.mean(axis=0), np.cov(x, rowvar=False), x.shape[0])


def frechet_distance(
    mu1: ArrayLike, s1: ArrayLike, mu2: ArrayLike, s2: ArrayLike, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2)."""
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    s1, s2 = np.atleast_2d(_as_float64(s1)), np.atleast_2d(_as_float64(s2))
    dim = mu1.shape[0]
    if (
        mu1.shape != (dim,)
        or mu2.shape != (dim,)
        or s1.shape != (dim, dim)
        or s2.shape != (dim, dim)
    ):
        raise ValueError(
            f"mismatched Gaussian shapes: mu {mu1.shape} / {mu2.shape}, "
            f"sigma {s1.shape} / {s2.shape}"
        )
    with warnings.catch_warnings():  # singular products are handled below, not just reported
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # regularise both covariances and retry
            offset = np.eye(dim) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > IMAGINARY_TOLERANCE:
            raise ValueError(f"matrix square root has an imaginary component of {imaginary:.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


@dataclass(frozen=True)
class FADResult:
    """A FAD value with the number of embeddings in each set (the value depends on them)."""

    value: float
    n_a: int
    n_b: int


def fad_from_stats(a: GaussianStats, b: GaussianStats) -> FADResult:
    """FAD between two fitted embedding sets."""
    return FADResult(frechet_distance(a.mu, a.sigma, b.mu, b.sigma), a.n, b.n)


def fad(emb_a: ArrayLike, emb_b: ArrayLike) -> FADResult:
    """FAD between two ``(N, D)`` embedding sets (e.g. reference and generated audio)."""
    return fad_from_stats(embedding_stats(emb_a), embedding_stats(emb_b))
