"""Compress an audio file with a trained codec.

    python -m musicgen.compress in.wav out.ecdc --checkpoint PATH [--bandwidth KBPS]

``PATH`` is a saved codec directory, a ``train.py`` checkpoint of ``solver=compression`` or an
official EnCodec ``.th`` file. ``--bandwidth`` picks the number of codebooks (default: all).
The ``.ecdc`` format is described in :mod:`musicgen.compression.container`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile as sf
import torch

from musicgen.audio import convert_audio
from musicgen.compression import CompressionModel
from musicgen.compression.checkpoint import file_digest
from musicgen.compression.container import write_ecdc
from musicgen.errors import UserError


def load_codec(checkpoint: str | Path) -> CompressionModel:
    if not Path(checkpoint).exists():
        raise UserError(
            f"codec checkpoint {checkpoint} does not exist: pass --checkpoint <saved codec dir, .ckpt or .th>"
        )
    return CompressionModel.from_checkpoint(checkpoint)


def read_audio(path: str | Path, sample_rate: int, channels: int) -> torch.Tensor:
    """``(channels, T)`` float32 audio of ``path`` at ``sample_rate``."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise UserError(f"cannot read audio file {path} ({err}): pass a WAV/FLAC/OGG file") from err
    return convert_audio(torch.from_numpy(audio.T.copy()), rate, sample_rate, channels)


def compress(
    source: str | Path, target: str | Path, checkpoint: str | Path, bandwidth: float | None = None
) -> dict:
    """Encode ``source`` into the ``.ecdc`` file ``target``; returns the header written."""
    model = load_codec(checkpoint)
    wav = read_audio(source, model.sample_rate, model.channels)
    scale = None
    if model.config.normalize:
        scale = float(wav.pow(2).mean().sqrt()) + 1e-8
        wav = wav / scale
    n_q = model.n_q_for_bandwidth(bandwidth) if bandwidth else model.num_codebooks
    codes = model.encode(wav.unsqueeze(0), n_q)[0]
    header = {
        "model": model.config.to_dict(),
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": file_digest(checkpoint),
        "bits": model.config.bits_per_codebook,
        "bandwidth_kbps": model.config.kbps(n_q),
        "sample_rate": model.sample_rate,
        "channels": model.channels,
        "length": wav.shape[-1],
        "scale": scale,
    }
    write_ecdc(target, codes, header)
    return header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.compress", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("source", help="audio file to compress")
    parser.add_argument("target", help="the .ecdc file to write")
    parser.add_argument(
        "--checkpoint", required=True, help="saved codec directory, train.py .ckpt or official .th"
    )
    parser.add_argument(
        "--bandwidth",
        type=float,
        default=None,
        help="target bitrate in kbps (default: all codebooks)",
    )
    args = parser.parse_args(argv)
    try:
        header = compress(args.source, args.target, args.checkpoint, args.bandwidth)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.target}: {header['bandwidth_kbps']:.3g} kbps, {header['length'] / header['sample_rate']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
