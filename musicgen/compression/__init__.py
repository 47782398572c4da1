"""EnCodec-style neural audio codec built on the ``encodec`` package (pure PyTorch)."""

from musicgen.compression.config import OFFICIAL, CodecConfig
from musicgen.compression.model import CodecOutput, CompressionModel, EncodedAudio
from musicgen.compression.quantizer import FixedResidualVectorQuantizer, codebook_stats

__all__ = [
    "OFFICIAL",
    "CodecConfig",
    "CodecOutput",
    "CompressionModel",
    "EncodedAudio",
    "FixedResidualVectorQuantizer",
    "codebook_stats",
]
