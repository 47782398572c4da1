"""Separate a recording into stems, one WAV per stem.

    python -m musicgen.separate in.wav OUTDIR (--checkpoint PATH | --model NAME)
                                [--model-dir DIR] [--stems vocals,other] [--device cpu]

``--checkpoint``: a ``train.py`` checkpoint of ``solver=separation`` or an unpacked Spleeter
release folder; ``--model``: ``spleeter:2stems|4stems|5stems`` (weights in
``DIR/<n>stems``) or a Demucs name such as ``htdemucs`` (a Demucs repo folder ``DIR``);
``--model-dir`` defaults to ``weights/spleeter`` or ``weights/demucs`` (``MUSICGEN_WEIGHTS``).
``OUTDIR/<stem>.wav`` (32-bit float) has the input's rate and channels. The file is read, separated and
written in blocks of about a minute that overlap by one model window and are cross-faded there,
so memory stays bounded whatever the length.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from musicgen.errors import UserError
from musicgen.paths import inside
from musicgen.separation.apply import separate
from musicgen.separation.checkpoint import load_separator

BLOCK_SECONDS = 60.0


def _open_audio(path: str | Path) -> sf.SoundFile:
    if not Path(path).is_file():
        raise UserError(f"audio file {path} does not exist: pass the path of a recording")
    try:
        audio = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise UserError(
            f"cannot read audio file {path} ({err}): pass a WAV/FLAC/OGG file"
        ) from None
    if audio.frames == 0:
        audio.close()
        raise UserError(f"audio file {path} has no samples: pass a recording that is not empty")
    return audio


def _check_channels(path: str | Path, channels: int, model_channels: int) -> None:
    if channels not in (1, 2, model_channels):
        raise UserError(
            f"audio file {path} has {channels} channels, the model takes mono or stereo: "
            f"mix it down first (e.g. ffmpeg -i {path} -ac 2 out.wav)"
        )


def _stem_indices(wanted: str | None, stems: tuple[str, ...]) -> list[int]:
    if not wanted:
        return list(range(len(stems)))
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in stems]
    if unknown or not names:
        raise UserError(
            f"unknown stem {', '.join(map(repr, unknown)) or repr(wanted)}: this model separates "
            f"{', '.join(stems)}"
        )
    return [stems.index(name) for name in dict.fromkeys(names)]


def separate_file(
    source: str | Path,
    outdir: str | Path,
    checkpoint: str | Path,
    model_dir: str | Path | None = None,
    stems: str | None = None,
    device: str = "cpu",
    block_seconds: float = BLOCK_SECONDS,
) -> list[Path]:
    """Write the stems of ``source`` into ``outdir``; returns the files written."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"output folder {outdir} is a file: pass a folder")
    with _open_audio(source) as audio:
        rate, channels, frames = audio.samplerate, audio.channels, audio.frames
        model = load_separator(checkpoint, model_dir).to(device)
        _check_channels(source, channels, model.audio_channels)
        indices = _stem_indices(stems, model.stems)
        outdir.mkdir(parents=True, exist_ok=True)
        targets = [inside(outdir, f"{model.stems[i]}.wav") for i in indices]
        segment = model.segment_samples / model.sample_rate
        core = max(round(block_seconds * rate), 1)
        context = math.ceil(segment / 2 * rate)
        writers = [
            sf.SoundFile(str(t), "w", rate, channels, subtype="FLOAT", format="WAV")
            for t in targets
        ]
        tail = None  # the previous block's estimates over the cross-fade region
        try:
            with tqdm(total=round(frames / rate, 2), unit="s", desc="separate", disable=None,
                      bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]") as bar:  # fmt: skip
                for start in range(0, frames, core):
                    first, last = max(0, start - context), min(frames, start + core + context)
                    audio.seek(first)
                    block = audio.read(last - first, dtype="float32", always_2d=True)
                    if not np.isfinite(block).all():
                        raise UserError(
                            f"audio file {source} holds NaN or infinite samples: replace them "
                            "(e.g. by 0) and separate again"
                        )
                    mix = torch.from_numpy(block.T.copy()).to(device)
                    out = separate(model, mix, rate)[0, indices].cpu()  # (S', C, n)
                    if tail is not None:
                        fade = torch.linspace(0, 1, tail.shape[-1] + 2)[1:-1]
                        out[..., : tail.shape[-1]] = (
                            tail * (1 - fade) + out[..., : tail.shape[-1]] * fade
                        )
                    final = start + core >= frames
                    keep = out.shape[-1] if final else (start + core - context) - first
                    for writer, stem in zip(writers, out[..., :keep], strict=True):
                        writer.write(stem.T.numpy())
                    tail = out[..., keep:]
                    bar.update(round((min(frames, start + core) - start) / rate, 2))
        finally:
            for writer in writers:
                writer.close()
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.separate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("source", help="audio file to separate")
    parser.add_argument("outdir", help="folder for the <stem>.wav files")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--checkpoint", help="train.py .ckpt of solver=separation or a Spleeter folder"
    )
    model.add_argument("--model", help="spleeter:2stems|4stems|5stems or a Demucs name (htdemucs)")
    parser.add_argument("--model-dir", default=None, help="folder of the released weights")
    parser.add_argument(
        "--stems", default=None, help="comma-separated stems to write (default: all)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parser.parse_args(argv)
    try:
        if args.checkpoint is not None and not Path(args.checkpoint).exists():
            raise UserError(
                f"checkpoint {args.checkpoint} does not exist: pass a .ckpt of train.py "
                "solver=separation or an unpacked Spleeter release folder"
            )
        written = separate_file(
            args.source,
            args.outdir,
            args.checkpoint or args.model,
            args.model_dir,
            args.stems,
            args.device,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
