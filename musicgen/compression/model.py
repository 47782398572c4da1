"""``CompressionModel``: an EnCodec-style codec on the ``encodec`` package's SEANet and RVQ modules."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from encodec.modules import SEANetDecoder, SEANetEncoder
from torch import nn

from musicgen.compression import checkpoint as ckpt
from musicgen.compression import streaming
from musicgen.compression.config import OFFICIAL, OFFICIAL_BANDWIDTHS, CodecConfig
from musicgen.compression.quantizer import FixedResidualVectorQuantizer
from musicgen.errors import UserError

CHUNK_SECONDS = 10.0  # default chunk of encode/decode: bounds memory whatever the signal length
Progress = Callable[[int], None]  # called with the number of input samples just coded


@dataclass
class CodecOutput:
    """Reconstruction ``(B, C, T)``, codes ``(B, K, frames)`` and commitment loss of a forward pass."""

    audio: torch.Tensor
    codes: torch.Tensor
    commitment: torch.Tensor


@dataclass
class EncodedAudio:
    """Codes ``(K, frames)`` of one signal, segment after segment (see
    :meth:`CompressionModel.segments`), and each segment's scale ``(segments,)`` when the codec
    normalises its input (else None)."""

    codes: torch.Tensor
    scales: torch.Tensor | None


class CompressionModel(nn.Module):
    """Encoder -> residual vector quantizer -> decoder, built from a :class:`CodecConfig`.

    The sub-module names (``encoder``, ``quantizer``, ``decoder``) and layout are those of
    ``encodec.EncodecModel``, so official state dicts load as they are. ``forward`` is the
    training pass (straight-through RVQ with the residual fix, codebook EMA updates);
    ``encode``/``decode`` are inference, computed in chunks of bounded memory whose result
    equals whole-signal inference; ``compress``/``decompress`` code a whole recording the way
    ``encodec.EncodecModel`` does (segments and normalisation). Audio is ``(B, C, T)`` at
    ``sample_rate``.
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

    def _offered_codebooks(self) -> list[int]:
        """Codebook counts offered: the ``encodec`` package's bandwidths for an official model, else any."""
        counts = range(1, self.num_codebooks + 1)
        if OFFICIAL.get(self.config.name) != self.config:
            return list(counts)
        official = OFFICIAL_BANDWIDTHS[self.config.name]
        return [n for n in counts if any(abs(self.config.kbps(n) - b) < 1e-6 for b in official)]

    @property
    def bandwidths(self) -> tuple[float, ...]:
        """The bitrates (kbps, rounded to 3 decimals) this codec offers."""
        return tuple(round(self.config.kbps(n), 3) for n in self._offered_codebooks())

    def codebooks_for(self, kbps: float) -> int:
        """Number of codebooks of one of :attr:`bandwidths`; a UserError names them for any other value."""
        for n in self._offered_codebooks():
            if abs(self.config.kbps(n) - kbps) < 5e-4:
                return n
        offered = ", ".join(f"{b:g}" for b in self.bandwidths)
        raise UserError(
            f"the {self.config.name} codec offers {offered} kbps, not {kbps:g}: pick one of these"
        )

    def digest(self) -> str:
        """16 hex digits of the sha256 of the config and weights: names a codec whatever file holds it."""
        sha = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            sha.update(name.encode())
            sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return sha.hexdigest()[:16]

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

    @property
    def streamable(self) -> bool:
        """Whether chunked inference equals whole-signal inference (not with ``time_group_norm``)."""
        return self.config.norm != "time_group_norm"

    def _chunk(self, chunk_frames: int | None) -> int:
        return chunk_frames or max(1, round(CHUNK_SECONDS * self.frame_rate))

    @torch.no_grad()
    def encode(
        self,
        wav: torch.Tensor,
        n_q: int | None = None,
        chunk_frames: int | None = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Codes ``(B, n_q, ceil(T / hop))`` (int64) of ``wav``; ``n_q`` defaults to all codebooks.

        Long signals are encoded ``chunk_frames`` frames at a time (default 10 s) with the
        context the architecture needs, which gives the codes of whole-signal encoding; a
        ``time_group_norm`` codec, which cannot be chunked, encodes whole signals.
        """
        self._check(wav)
        n_q = self._n_q(n_q)
        step = self._chunk(chunk_frames) * self.config.hop_length
        chunked = self.streamable and wav.shape[-1] > step
        if chunked:
            stack = streaming.stages(self.encoder, self.config.causal, down=self.config.hop_length)
            latents = streaming.run(stack, _chunks(wav, step, progress))
        else:
            latents = iter([self.encoder(wav)])
        codes = torch.cat([self.quantizer.vq.encode(latent, n_q) for latent in latents], dim=-1)
        if progress is not None and not chunked:
            progress(wav.shape[-1])
        return codes.transpose(0, 1)

    @torch.no_grad()
    def decode(
        self, codes: torch.Tensor, length: int | None = None, chunk_frames: int | None = None
    ) -> torch.Tensor:
        """Audio ``(B, C, frames * hop)`` of ``codes`` ``(B, K, frames)``, trimmed to ``length``."""
        audio = torch.cat(list(self.decode_chunks(codes, chunk_frames)), dim=-1)
        return audio if length is None else audio[..., :length]

    @torch.no_grad()
    def decode_chunks(
        self, codes: torch.Tensor, chunk_frames: int | None = None
    ) -> Iterator[torch.Tensor]:
        """:meth:`decode` piece by piece (``chunk_frames`` frames at a time, default 10 s), in bounded memory."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.num_codebooks:
            raise ValueError(
                f"expected codes of shape (batch, 1..{self.num_codebooks}, frames), got {tuple(codes.shape)}"
            )
        step = self._chunk(chunk_frames)
        if not self.streamable or codes.shape[-1] <= step:
            yield self.decoder(self.quantizer.vq.decode(codes.transpose(0, 1)))
            return
        latents = (
            self.quantizer.vq.decode(codes[..., i : i + step].transpose(0, 1))
            for i in range(0, codes.shape[-1], step)
        )
        stack = streaming.stages(self.decoder, self.config.causal, up=self.config.hop_length)
        yield from streaming.run(stack, latents)

    def segments(self, length: int) -> list[tuple[int, int]]:
        """``(offset, samples)`` of the independently coded segments of a ``length``-sample signal."""
        size, stride = self.config.segment_length, self.config.segment_stride
        if size is None or stride is None:
            return [(0, length)]
        return [(offset, min(size, length - offset)) for offset in range(0, length, stride)]

    def frames_for(self, length: int) -> int:
        """Number of code frames :meth:`compress` makes of a ``length``-sample signal."""
        return sum(-(-size // self.config.hop_length) for _, size in self.segments(length))

    @torch.no_grad()
    def compress(
        self,
        wav: torch.Tensor,
        n_q: int | None = None,
        chunk_frames: int | None = None,
        progress: Progress | None = None,
    ) -> EncodedAudio:
        """Codes of a whole recording ``wav`` ``(C, T)`` as ``encodec.EncodecModel.encode`` makes them.

        Each segment (:meth:`segments`) is divided by the RMS of its mono mix (plus 1e-8) when
        the codec normalises, then encoded with :meth:`encode`.
        """
        codes, scales = [], []
        stride = self.config.segment_stride
        for offset, size in self.segments(wav.shape[-1]):
            x = wav[None, :, offset : offset + size]
            if self.config.normalize:
                volume = x.mean(dim=1, keepdim=True).pow(2).mean(dim=2, keepdim=True).sqrt()
                scale = 1e-8 + volume
                x = x / scale
                scales.append(scale.view(1))
            codes.append(self.encode(x, n_q, chunk_frames, progress if stride is None else None)[0])
            if progress is not None and stride is not None:
                progress(min(stride, wav.shape[-1] - offset))
        return EncodedAudio(torch.cat(codes, dim=-1), torch.cat(scales) if scales else None)

    @torch.no_grad()
    def decompress(
        self, encoded: EncodedAudio, length: int, chunk_frames: int | None = None
    ) -> Iterator[torch.Tensor]:
        """The ``length`` samples ``(C, n)`` coded by :meth:`compress`, piece by piece.

        Segments are decoded, multiplied by their scale and cross-faded as
        ``encodec.EncodecModel.decode`` does.
        """
        remaining = length
        for piece in self._decoded(encoded, length, chunk_frames):
            piece = piece[..., :remaining]
            remaining -= piece.shape[-1]
            if piece.shape[-1]:
                yield piece

    def _decoded(
        self, encoded: EncodedAudio, length: int, chunk_frames: int | None
    ) -> Iterator[torch.Tensor]:
        """Decoded segments, scaled and overlap-added, before trimming to ``length``."""
        stride = self.config.segment_stride
        overlap = streaming.OverlapAdd(stride) if stride is not None else None
        start = 0
        for index, (_, size) in enumerate(self.segments(length)):
            frames = -(-size // self.config.hop_length)
            codes = encoded.codes[None, :, start : start + frames]
            start += frames
            for piece in self._segment_pieces(codes, overlap is None, chunk_frames):
                if encoded.scales is not None:
                    piece = piece * encoded.scales[index].view(-1, 1, 1)
                yield piece[0] if overlap is None else overlap.push(piece[0])
        if overlap is not None:
            yield overlap.flush()

    def _segment_pieces(
        self, codes: torch.Tensor, stream: bool, chunk_frames: int | None
    ) -> Iterator[torch.Tensor]:
        """One segment's audio: streamed pieces, or (to overlap-add) the whole segment at once."""
        pieces = self.decode_chunks(codes, chunk_frames)
        return pieces if stream else iter([torch.cat(list(pieces), dim=-1)])

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (see :mod:`musicgen.compression.checkpoint`)."""
        return ckpt.write_codec_dir(directory, self.config, self.state_dict())

    @classmethod
    def _from_state(cls, config: CodecConfig, state: ckpt.State, source: Path) -> CompressionModel:
        model = cls(config)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:
            lines = str(err).strip().splitlines()
            reason = next((line.strip() for line in lines if "size mismatch" in line), lines[0])
        else:
            if not missing and not unexpected:
                return model.eval()
            example = (missing or unexpected)[0]
            reason = f"{len(missing)} tensors missing, {len(unexpected)} unexpected, e.g. {example}"
        raise UserError(
            f"the weights in {source} do not fit its codec config ({reason[:160]}): pass an unmodified codec checkpoint"
        )

    @classmethod
    def load(cls, directory: str | Path) -> CompressionModel:
        """A model written by :meth:`save`, in eval mode."""
        return cls._from_state(*ckpt.read_codec_dir(directory), Path(directory))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> CompressionModel:
        """Load a saved directory, a ``train.py`` .ckpt of ``solver=compression`` or an official ``.th`` file.

        Anything else (a missing, empty or damaged file, another kind of file) is a UserError.
        """
        path = Path(path)
        if path.is_dir():
            return cls.load(path)
        if path.suffix == ".safetensors":
            raise UserError(
                f"codec checkpoint {path} is a bare weights file: pass the folder holding it and its {ckpt.CONFIG_FILE} (written by CompressionModel.save)"
            )
        name = ckpt.official_name(path)
        if name is not None and path.is_file():
            return cls.from_pretrained(name, repository=path.parent)
        return cls._from_state(*ckpt.read_lightning_checkpoint(path), path)

    @classmethod
    def from_pretrained(
        cls, name: str, repository: str | Path, check_hash: bool = True
    ) -> CompressionModel:
        """Official EnCodec weights (``encodec_24khz`` or ``encodec_48khz``) from a local folder.

        The folder holds the published file (``encodec_24khz-d7cc33bc.th`` ...); its sha256 prefix
        is checked unless ``check_hash=False``. The 48 kHz model expects unit-RMS input
        (``config.normalize``) in 1 s segments (``config.segment``): use :meth:`compress` for it.
        """
        path = Path(repository)
        return cls._from_state(*ckpt.read_official(name, path, check_hash), path)


def _chunks(wav: torch.Tensor, step: int, progress: Progress | None) -> Iterator[torch.Tensor]:
    """``wav`` in pieces of ``step`` samples, reporting each one to ``progress`` once it is coded."""
    for start in range(0, wav.shape[-1], step):
        yield wav[..., start : start + step]
        if progress is not None:
            progress(min(step, wav.shape[-1] - start))
