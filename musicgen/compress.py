"""Compress an audio file with a trained codec.

    python -m musicgen.compress in.wav out.ecdc --checkpoint PATH [--bandwidth KBPS]

``PATH`` is a saved codec directory, a ``train.py`` checkpoint of ``solver=compression`` or an
official EnCodec ``.th`` file. ``--bandwidth`` is one of the bitrates the codec offers (default:
the highest). Mono input to a stereo codec is duplicated and stereo input to a mono codec mixed
down (as the ``encodec`` package does); other channel counts are refused. Memory stays bounded
whatever the length (the codec runs in chunks). The ``.ecdc`` format is described in
:mod:`musicgen.compression.container`; it names the codec by model name and weight digest only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from musicgen.audio import convert_audio
from musicgen.compression import CompressionModel
from musicgen.compression.container import write_ecdc
from musicgen.errors import UserError

PROGRESS_SECONDS = 30.0  # longer files show a progress bar (on a terminal)


def check_target(path: str | Path) -> None:
    """A UserError unless ``path`` can be created: its folder exists and it is not a folder."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"output path {target} is a folder: pass a file name")
    if not target.parent.is_dir():
        raise UserError(
            f"the folder {target.parent} of output {target} does not exist: create it or pick another path"
        )


def progress_bar(seconds: float, desc: str) -> tqdm:
    """A tqdm bar in seconds of audio, shown on a terminal for files over ``PROGRESS_SECONDS``."""
    return tqdm(
        total=round(seconds, 2),
        unit="s",
        desc=desc,
        leave=False,
        disable=None if seconds > PROGRESS_SECONDS else True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]",
    )


def read_audio(path: str | Path, model: CompressionModel) -> torch.Tensor:
    """``(channels, T)`` float32 audio of ``path`` at the codec's rate and channel count."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise UserError(
            f"cannot read audio file {path} ({err}): pass a WAV/FLAC/OGG file"
        ) from None
    if audio.shape[0] == 0:
        raise UserError(f"audio file {path} has no samples: pass a recording that is not empty")
    if not np.isfinite(audio).all():
        raise UserError(
            f"audio file {path} holds NaN or infinite samples: replace them (e.g. by 0) and compress again"
        )
    channels = _check_channels(path, audio.shape[1], model)
    if channels != model.channels:
        how = "duplicated" if channels == 1 else "mixed down"
        print(
            f"note: {path} has {channels} channel(s), the codec {model.channels}: {how}",
            file=sys.stderr,
        )
    return convert_audio(torch.from_numpy(audio.T.copy()), rate, model.sample_rate, model.channels)


def _check_channels(path: str | Path, channels: int, model: CompressionModel) -> int:
    """``channels`` when the codec can take it (its own count, mono, or stereo into mono)."""
    if channels in (model.channels, 1) or (channels == 2 and model.channels == 1):
        return channels
    raise UserError(
        f"audio file {path} has {channels} channels; the {model.config.name} codec takes "
        f"{model.channels} (or mono{', or stereo mixed down' if model.channels == 1 else ''}): "
        f"mix it down first (e.g. ffmpeg -i {path} -ac {model.channels} out.wav)"
    )


def compress(
    source: str | Path, target: str | Path, checkpoint: str | Path, bandwidth: float | None = None
) -> dict:
    """Encode ``source`` into the ``.ecdc`` file ``target``; returns the header written."""
    if not Path(source).is_file():
        raise UserError(f"audio file {source} does not exist: pass the path of a recording")
    check_target(target)
    model = CompressionModel.from_checkpoint(checkpoint)
    n_q = model.num_codebooks if bandwidth is None else model.codebooks_for(bandwidth)
    wav = read_audio(source, model)
    with progress_bar(wav.shape[-1] / model.sample_rate, "compress") as bar:
        encoded = model.compress(wav, n_q, progress=lambda n: bar.update(n / model.sample_rate))
    header = {
        "codec": model.config.name,
        "codec_sha256": model.digest(),
        "bits": model.config.bits_per_codebook,
        "bandwidth_kbps": round(model.config.kbps(n_q), 3),
        "sample_rate": model.sample_rate,
        "channels": model.channels,
        "length": wav.shape[-1],
    }
    try:
        write_ecdc(target, encoded.codes, encoded.scales, header)
    except OSError as err:
        raise UserError(f"cannot write {target} ({err.strerror}): pick another path") from None
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
        help="bitrate in kbps, one the codec offers (default: the highest)",
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
