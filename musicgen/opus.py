"""Opus baseline: encode and decode audio with ffmpeg's libopus at a given bitrate.

Each call writes a WAV to a temporary folder, encodes it to Ogg/Opus at a constant bitrate
(``-vbr off``, 48 kHz, the rate Opus works at) and decodes it back to the input's rate and
channel count. Opus does not go below 6 kbps.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from musicgen.audio import fit_length
from musicgen.errors import UserError

MIN_KBPS = 6.0


@functools.cache
def ffmpeg_with_libopus() -> str:
    """Path of an ffmpeg that has the libopus encoder, or a UserError naming the fix."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise UserError(
            "ffmpeg is not installed, which the Opus baseline needs: run `make install` (or apt-get install ffmpeg)"
        )
    encoders = subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True
    ).stdout
    if "libopus" not in encoders:
        raise UserError(
            f"{ffmpeg} has no libopus encoder: install an ffmpeg built with libopus (Debian's ffmpeg package has it)"
        )
    return ffmpeg


def _ffmpeg(*args: str) -> None:
    result = subprocess.run(
        [ffmpeg_with_libopus(), "-hide_banner", "-loglevel", "error", "-y", *args],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {result.stderr.strip()}")


def opus_roundtrip(wav: torch.Tensor, sample_rate: int, kbps: float) -> tuple[torch.Tensor, float]:
    """``(decoded, measured_kbps)`` for ``wav`` ``(C, T)`` coded with Opus at ``kbps`` (>= 6).

    ``measured_kbps`` is the size of the Ogg/Opus file (container included) over the duration.
    """
    if kbps < MIN_KBPS:
        raise ValueError(f"Opus cannot code below {MIN_KBPS} kbps, got {kbps}")
    channels, length = wav.shape
    with tempfile.TemporaryDirectory(prefix="opus-") as tmp:
        source, coded, decoded = Path(tmp, "in.wav"), Path(tmp, "coded.opus"), Path(tmp, "out.wav")
        sf.write(source, wav.detach().cpu().float().numpy().T, sample_rate, subtype="FLOAT")
        _ffmpeg(
            "-i",
            str(source),
            "-c:a",
            "libopus",
            "-b:a",
            f"{kbps * 1000:.0f}",
            "-vbr",
            "off",
            "-ar",
            "48000",
            str(coded),
        )
        _ffmpeg(
            "-i",
            str(coded),
            "-ar",
            str(sample_rate),
            "-ac",
            str(channels),
            "-c:a",
            "pcm_f32le",
            str(decoded),
        )
        audio, _ = sf.read(decoded, dtype="float32", always_2d=True)
        measured = coded.stat().st_size * 8 / 1000 / (length / sample_rate)
    out = torch.from_numpy(np.ascontiguousarray(audio.T)).to(wav.device)
    return fit_length(out, length), measured
