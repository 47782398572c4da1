"""Decode an ``.ecdc`` file written by ``python -m musicgen.compress`` back to audio.

    python -m musicgen.decompress in.ecdc out.wav [--checkpoint PATH]

The codec is the one named in the file's header (checked against its sha256); pass
``--checkpoint`` when it has moved.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile as sf

from musicgen.compress import load_codec
from musicgen.compression.checkpoint import file_digest
from musicgen.compression.container import read_ecdc
from musicgen.errors import UserError


def decompress(
    source: str | Path, target: str | Path, checkpoint: str | Path | None = None
) -> dict:
    """Write the audio coded in ``source`` to ``target`` (16-bit PCM at the codec's rate); returns the header."""
    header, codes = read_ecdc(source)
    checkpoint = Path(checkpoint or header["checkpoint"])
    if not checkpoint.exists():
        raise UserError(
            f"the codec {checkpoint} that {source} was compressed with is missing: pass --checkpoint PATH"
        )
    if file_digest(checkpoint) != header["checkpoint_sha256"]:
        raise UserError(
            f"{checkpoint} is not the codec {source} was compressed with (sha256 differs): pass --checkpoint with that codec"
        )
    model = load_codec(checkpoint)
    wav = model.decode(codes.unsqueeze(0), header["length"])[0]
    if header["scale"] is not None:
        wav = wav * header["scale"]
    sf.write(target, wav.clamp(-1, 1).numpy().T, header["sample_rate"], subtype="PCM_16")
    return header


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.decompress", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("source", help="the .ecdc file")
    parser.add_argument("target", help="audio file to write (WAV)")
    parser.add_argument(
        "--checkpoint", default=None, help="the codec, when it is no longer where the header says"
    )
    args = parser.parse_args(argv)
    try:
        decompress(args.source, args.target, args.checkpoint)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
