"""``CompressionModel``: an EnCodec-style codec on the ``encodec`` package's SEANet and RVQ modules."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from encodec.modules import SEANetDecoder, SEANetEncoder
from torch import nn

from musicgen.compression import checkpoint as ckpt
from musicgen.compression.config import CodecConfig
from musicgen.compression.quantizer import FixedResidualVectorQuantizer


@dataclass
class CodecOutput:
    """Reconstruction ``(B, C, T)``, codes ``(B, K, frames)`` and commitment loss of a forward pass."""

    audio: torch.Tensor
    codes: torch.Tensor
    commitment: torch.Tensor


class CompressionModel(nn.Module):
    """Encoder -> residual vector quantizer -> decoder, built from a :class:`CodecConfig`.

    The sub-module names (``encoder``, ``quantizer``, ``decoder``) and layout are those of
    ``encodec.EncodecModel``, so official state dicts load as they are. ``forward`` is the
    training pass (straight-through RVQ with the residual fix, codebook EMA updates);
    ``encode``/``decode`` are inference. Audio is ``(B, C, T)`` at ``sample_rate``.
    """

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config
        seanet = dict(
            channels=config.channels,
            dimension=config.dimension,
            n_filters=config.n_filters,
            n_residual_layers=config.n_residual_layers,
            ratios=list(config.ratios),
            norm=config.norm,
            causal=config.causal,
            pad_mode=config.pad_mode,
            true_skip=config.true_skip,
            compress=config.compress,
            lstm=config.lstm,
        )
        with (
            warnings.catch_warnings()
        ):  # the package uses the deprecated torch.nn.utils.weight_norm
            warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
            self.encoder = SEANetEncoder(**seanet)
            self.decoder = SEANetDecoder(**seanet)
        self.quantizer = FixedResidualVectorQuantizer(
            dimension=config.dimension,
            n_q=config.n_q,
            bins=config.bins,
            decay=config.decay,
            kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters,
            threshold_ema_dead_code=config.threshold_ema_dead_code,
        )

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def cardinality(self) -> int:
        return self.config.bins

    @property
    def num_codebooks(self) -> int:
        return self.config.n_q

    def n_q_for_bandwidth(self, kbps: float) -> int:
        """Number of codebooks whose bitrate fits in ``kbps`` (at least 1, at most ``num_codebooks``)."""
        return max(1, min(self.num_codebooks, math.floor(kbps / self.config.kbps(1) + 1e-9)))

    def _check(self, wav: torch.Tensor) -> None:
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise ValueError(
                f"expected audio of shape (batch, {self.channels}, time), got {tuple(wav.shape)}"
            )

    def _n_q(self, n_q: int | None) -> int:
        n_q = n_q or self.num_codebooks
        if not 1 <= n_q <= self.num_codebooks:
            raise ValueError(f"n_q must be in [1, {self.num_codebooks}], got {n_q}")
        return n_q

    def forward(self, wav: torch.Tensor, n_q: int | None = None) -> CodecOutput:
        self._check(wav)
        quantized = self.quantizer(self.encoder(wav), self._n_q(n_q))
        audio = self.decoder(quantized.quantized)[..., : wav.shape[-1]]
        return CodecOutput(audio, quantized.codes, quantized.commitment)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """Codes ``(B, n_q, ceil(T / hop))`` (int64) of ``wav``; ``n_q`` defaults to all codebooks."""
        self._check(wav)
        return self.quantizer.vq.encode(self.encoder(wav), self._n_q(n_q)).transpose(0, 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Audio ``(B, C, frames * hop)`` of ``codes`` ``(B, K, frames)``, trimmed to ``length``."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.num_codebooks:
            raise ValueError(
                f"expected codes of shape (batch, 1..{self.num_codebooks}, frames), got {tuple(codes.shape)}"
            )
        audio = self.decoder(self.quantizer.vq.decode(codes.transpose(0, 1)))
        return audio if length is None else audio[..., :length]

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (see :mod:`musicgen.compression.checkpoint`)."""
        return ckpt.write_codec_dir(directory, self.config, self.state_dict())

    @classmethod
    def _from_state(cls, config: CodecConfig, state: ckpt.State) -> CompressionModel:
        model = cls(config)
        model.load_state_dict(state)
        return model.eval()

    @classmethod
    def load(cls, directory: str | Path) -> CompressionModel:
        """A model written by :meth:`save`, in eval mode."""
        return cls._from_state(*ckpt.read_codec_dir(directory))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> CompressionModel:
        """Load a saved directory, a ``train.py`` .ckpt of ``solver=compression`` or an official ``.th`` file."""
        path = Path(path)
        if path.is_dir():
            return cls.load(path)
        if not path.is_file():
            raise FileNotFoundError(path)
        name = ckpt.official_name(path)
        if name is not None:
            return cls.from_pretrained(name, repository=path.parent)
        return cls._from_state(*ckpt.read_lightning_checkpoint(path))

    @classmethod
    def from_pretrained(
        cls, name: str, repository: str | Path, check_hash: bool = True
    ) -> CompressionModel:
        """Official EnCodec weights (``encodec_24khz`` or ``encodec_48khz``) from a local folder.

        The folder holds the published file (``encodec_24khz-d7cc33bc.th`` ...); its sha256 prefix
        is checked unless ``check_hash=False``. The 48 kHz model expects unit-RMS input
        (``config.normalize``); unlike the ``encodec`` package we encode whole signals, not 1 s chunks.
        """
        return cls._from_state(*ckpt.read_official(name, repository, check_hash))
