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


def read_audio(path: str | Path, sample_rate: int, channels: int) -> torch.Tensor:
    """``(channels, T)`` float32 audio of ``path`` at ``sample_rate``.

    Mono input is duplicated and stereo mixed down to fit ``channels`` (with a note on stderr);
    other channel counts, a missing, unreadable or empty file and NaN/Inf samples are UserErrors.
    """
    if not Path(path).is_file():
        raise UserError(f"audio file {path} does not exist: pass the path of a recording")
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
    found = audio.shape[1]
    if found != channels and not (found == 1 or (found == 2 and channels == 1)):
        raise UserError(
            f"audio file {path} has {found} channels, this model takes {channels} (or mono"
            f"{', or stereo mixed down' if channels == 1 else ''}): mix it down first "
            f"(e.g. ffmpeg -i {path} -ac {channels} out.wav)"
        )
    if found != channels:
        how = "duplicated" if found == 1 else "mixed down"
        print(f"note: {path} has {found} channel(s), the model {channels}: {how}", file=sys.stderr)
    return convert_audio(torch.from_numpy(audio).T, rate, sample_rate, channels)


def compress(
    source: str | Path, target: str | Path, checkpoint: str | Path, bandwidth: float | None = None
) -> dict:
    """Encode ``source`` into the ``.ecdc`` file ``target``; returns the header written."""
    check_target(target)
    model = CompressionModel.from_checkpoint(checkpoint)
    n_q = model.num_codebooks if bandwidth is None else model.codebooks_for(bandwidth)
    wav = read_audio(source, model.sample_rate, model.channels)
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
