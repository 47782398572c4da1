"""Codec configuration: one dataclass describes every SEANet + RVQ codec we build or load."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from musicgen.errors import UserError


@dataclass(frozen=True)
class CodecConfig:
    """Architecture of a :class:`~musicgen.compression.CompressionModel`.

    ``ratios`` are the decoder's upsampling ratios (the encoder uses them reversed), so the hop
    is their product and the frame rate ``sample_rate / hop``. ``n_q`` codebooks of ``bins``
    entries give ``frame_rate * log2(bins) / 1000`` kbps per codebook. The remaining fields are
    passed to the ``encodec`` package's SEANet encoder/decoder and residual vector quantizer.
    ``normalize`` (official 48 kHz model) means audio is scaled to unit RMS (of its mono mix)
    before encoding. ``segment`` (seconds, or None for whole signals) and ``overlap`` (fraction of
    a segment) are the ``encodec`` package's ``EncodecModel`` overlap-add settings: files are coded
    as independent segments, each normalised on its own, and decoded segments are cross-faded.
    """

    sample_rate: int = 32000
    channels: int = 1
    ratios: tuple[int, ...] = (8, 5, 4, 4)
    n_filters: int = 64
    dimension: int = 128
    n_q: int = 4
    bins: int = 2048
    causal: bool = False
    norm: str = "weight_norm"
    pad_mode: str = "constant"
    true_skip: bool = True
    n_residual_layers: int = 1
    lstm: int = 2
    compress: int = 2
    kmeans_init: bool = True
    kmeans_iters: int = 50
    decay: float = 0.99
    threshold_ema_dead_code: float = 2.0
    normalize: bool = False
    segment: float | None = None
    overlap: float = 0.01
    name: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", tuple(int(r) for r in self.ratios))
        if 2 ** int(math.log2(self.bins)) != self.bins:
            raise UserError(
                f"codebook size must be a power of 2, got bins={self.bins}: pick 256, 1024, 2048 ..."
            )

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def segment_length(self) -> int | None:
        """Samples per segment (None: whole signals), as ``EncodecModel.segment_length``."""
        return None if self.segment is None else int(self.segment * self.sample_rate)

    @property
    def segment_stride(self) -> int | None:
        """Samples between segment starts, as ``EncodecModel.segment_stride``."""
        length = self.segment_length
        return None if length is None else max(1, int((1 - self.overlap) * length))

    @property
    def bits_per_codebook(self) -> int:
        return int(math.log2(self.bins))

    def kbps(self, n_q: int) -> float:
        """Bitrate in kbps of ``n_q`` codebooks."""
        return n_q * self.frame_rate * self.bits_per_codebook / 1000

    def to_dict(self) -> dict:
        """Plain JSON-able dict (lists, no tuples); ``from_dict`` inverts it."""
        out = asdict(self)
        out["ratios"] = list(self.ratios)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CodecConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(
                f"unknown codec config keys {sorted(unknown)}: use only {sorted(known)}"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise UserError(
                f"invalid codec config ({err}): fix the codec's config or export it again"
            ) from None


# The two models of the ``encodec`` package (``EncodecModel.encodec_model_24khz/48khz``):
# its SEANet defaults (32 filters, ratios [8, 5, 4, 2], 2 LSTM layers, convolutional skips,
# reflect padding) with 1024-entry codebooks, as many as the highest bandwidth needs.
OFFICIAL = {
    "encodec_24khz": CodecConfig(
        sample_rate=24000,
        channels=1,
        ratios=(8, 5, 4, 2),
        n_filters=32,
        dimension=128,
        n_q=32,
        bins=1024,
        causal=True,
        norm="weight_norm",
        pad_mode="reflect",
        true_skip=False,
        name="encodec_24khz",
    ),
    "encodec_48khz": CodecConfig(
        sample_rate=48000,
        channels=2,
        ratios=(8, 5, 4, 2),
        n_filters=32,
        dimension=128,
        n_q=16,
        bins=1024,
        causal=False,
        norm="time_group_norm",
        pad_mode="reflect",
        true_skip=False,
        normalize=True,
        segment=1.0,
        name="encodec_48khz",
    ),
}

# The bandwidths (kbps) the ``encodec`` package lets each official model use.
OFFICIAL_BANDWIDTHS = {
    "encodec_24khz": (1.5, 3.0, 6.0, 12.0, 24.0),
    "encodec_48khz": (3.0, 6.0, 12.0, 24.0),
}

# File names (with their sha256 prefix) under which the official weights are published.
OFFICIAL_FILES = {
    "encodec_24khz": "encodec_24khz-d7cc33bc.th",
    "encodec_48khz": "encodec_48khz-7e698e3e.th",
}
