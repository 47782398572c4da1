"""Decoding codec tokens with a :class:`MultiBandDiffusion` instead of the codec's decoder.

As AudioCraft's ``MultiBandDiffusion.tokens_to_wav``: the condition is the codec's continuous
latent of the tokens (the sum of the quantizer's codebook vectors, what its decoder reads), the
diffusion output has the length of the codec's decoding, and its level in each of 32 mel bands
is matched to the codec's decoding (``re_eq``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from musicgen.compression import CompressionModel
from musicgen.diffusion.bands import re_eq
from musicgen.diffusion.checkpoint import load_diffusion
from musicgen.diffusion.model import MultiBandDiffusion
from musicgen.errors import UserError

EQ_BANDS = 32  # AudioCraft's tokens_to_wav default


@torch.no_grad()
def codec_latent(codec: CompressionModel, codes: torch.Tensor) -> torch.Tensor:
    """The quantized latent ``(B, D, frames)`` of ``codes`` ``(B, K, frames)``."""
    return codec.quantizer.vq.decode(codes.transpose(0, 1))


def resolve_diffusion(
    diffusion: MultiBandDiffusion | str | Path, codec: CompressionModel, n_q: int
) -> MultiBandDiffusion:
    """``diffusion`` itself, or the decoder stored at that path (see :func:`load_diffusion`; a
    folder of released files gives the one for ``codec`` and ``n_q``)."""
    if isinstance(diffusion, MultiBandDiffusion):
        return diffusion
    return load_diffusion(diffusion, n_q=n_q, sample_rate=codec.sample_rate)


def check_fits(diffusion: MultiBandDiffusion, codec: CompressionModel, n_q: int) -> None:
    """A UserError when ``diffusion`` was not trained on ``codec``'s latent of ``n_q`` codebooks."""
    config = codec.config
    ours = {
        "sample_rate": diffusion.sample_rate,
        "channels": diffusion.channels,
        "latent_dim": diffusion.latent_dim,
        "hop_length": diffusion.hop_length,
        "n_q": diffusion.n_q if diffusion.n_q is not None else n_q,
    }
    theirs = {
        "sample_rate": config.sample_rate,
        "channels": config.channels,
        "latent_dim": config.dimension,
        "hop_length": config.hop_length,
        "n_q": n_q,
    }
    wrong = [f"{k} {ours[k]} vs {theirs[k]}" for k in ours if ours[k] != theirs[k]]
    if wrong:
        raise UserError(
            f"the diffusion decoder was trained for another codec or bandwidth ({', '.join(wrong)} "
            "for the decoder vs the codes): pass the decoder trained on this codec and n_q"
        )


@torch.no_grad()
def decode_tokens(
    diffusion: MultiBandDiffusion,
    codec: CompressionModel,
    codes: torch.Tensor,
    length: int | None = None,
    steps: int = 20,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Audio ``(B, C, length)`` of ``codes`` ``(B, K, frames)`` decoded by ``diffusion``, with the
    band levels of the codec's own decoding (see the module docstring)."""
    check_fits(diffusion, codec, codes.shape[1])
    reference = codec.decode(codes).float()
    latent = codec_latent(codec, codes).float()
    wav = diffusion.sample(
        latent, steps, generator, progress, length=reference.shape[-1], decoded=reference
    )
    wav = re_eq(wav, reference, diffusion.sample_rate, EQ_BANDS)
    return wav if length is None else wav[..., :length]
