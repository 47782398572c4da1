"""Decode an ``.ecdc`` file written by ``python -m musicgen.compress`` back to audio.

    python -m musicgen.decompress in.ecdc out.wav --checkpoint PATH
    python -m musicgen.decompress in.ecdc out.wav --checkpoint PATH --decoder diffusion \
        --diffusion-checkpoint MBD [--diffusion-steps 20] [--seed 0]

``PATH`` is the codec the file was compressed with (a saved codec directory, a ``train.py``
checkpoint or an official EnCodec ``.th`` file); the file names it by model name and weight
digest, and a different codec is refused. The audio is written piece by piece (16-bit PCM).
With ``--decoder diffusion`` a MultiBand Diffusion decoder trained on that codec's tokens
(``MBD``: a ``train.py`` checkpoint of ``solver=diffusion`` or AudioCraft's released weights)
decodes the whole file at once instead of the codec's decoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile as sf
import torch

from musicgen.compress import check_target, progress_bar
from musicgen.compression import CompressionModel, EncodedAudio
from musicgen.compression.config import OFFICIAL_FILES
from musicgen.compression.container import read_ecdc
from musicgen.diffusion.cli import add_decoder_arguments, decoder_checkpoint
from musicgen.diffusion.decoder import check_fits, decode_tokens, resolve_diffusion
from musicgen.errors import UserError


def load_codec(source: str | Path, header: dict, checkpoint: str | Path | None) -> CompressionModel:
    """The codec ``checkpoint``, checked to be the one the header of ``source`` names."""
    if checkpoint is None:
        name = header["codec"]
        if name in OFFICIAL_FILES:
            raise UserError(
                f"{source} was compressed with the official {name} codec: pass --checkpoint "
                f"<folder>/{OFFICIAL_FILES[name]}"
            )
        raise UserError(
            f"{source} was compressed with a {name} codec (digest {header['codec_sha256']}): pass "
            "--checkpoint with that codec (its .ckpt or saved folder)"
        )
    model = CompressionModel.from_checkpoint(checkpoint)
    if model.digest() != header["codec_sha256"]:
        raise UserError(
            f"{checkpoint} is not the codec {source} was compressed with (digest {model.digest()}, "
            f"the file needs {header['codec_sha256']}): pass --checkpoint with that codec"
        )
    return model


def check_codes(source: str | Path, header: dict, scales: int, model: CompressionModel) -> None:
    """A UserError when the header of ``source`` does not fit ``model`` (a damaged file)."""
    expected = {
        "sample_rate": model.sample_rate,
        "channels": model.channels,
        "bits": model.config.bits_per_codebook,
        "frames": model.frames_for(header["length"]),
        "scales": len(model.segments(header["length"])) if model.config.normalize else 0,
    }
    found = {**header, "scales": scales}
    wrong = [
        f"{key}={found[key]} (expected {value})"
        for key, value in expected.items()
        if found[key] != value
    ]
    if header["bits"] > model.config.bits_per_codebook:
        wrong.append(f"its codes can exceed the codebook size {model.cardinality}")
    if header["n_q"] > model.num_codebooks:
        wrong.append(f"n_q={header['n_q']} but the codec has {model.num_codebooks} codebooks")
    if wrong:
        raise UserError(
            f"{source} is damaged: its header does not fit the codec ({'; '.join(wrong)}): "
            "compress the audio again"
        )


def decompress(
    source: str | Path,
    target: str | Path,
    checkpoint: str | Path | None = None,
    diffusion_checkpoint: str | Path | None = None,
    diffusion_steps: int = 20,
    seed: int = 0,
) -> dict:
    """Write the audio coded in ``source`` to ``target`` (16-bit PCM at the codec's rate); returns
    the header. With ``diffusion_checkpoint`` that diffusion decoder decodes the codes."""
    header, codes, scales = read_ecdc(source)
    check_target(target)
    model = load_codec(source, header, checkpoint)
    check_codes(source, header, 0 if scales is None else len(scales), model)
    if diffusion_checkpoint is None:
        pieces = model.decompress(EncodedAudio(codes, scales), header["length"])
    else:
        pieces = diffusion_pieces(
            source, model, codes, header, diffusion_checkpoint, diffusion_steps, seed
        )
    try:
        with (
            sf.SoundFile(target, "w", model.sample_rate, model.channels, "PCM_16") as out,
            progress_bar(header["length"] / model.sample_rate, "decompress") as bar,
        ):
            for piece in pieces:
                out.write(piece.clamp(-1, 1).T.numpy())
                bar.update(piece.shape[-1] / model.sample_rate)
    except (sf.LibsndfileError, TypeError, ValueError, OSError) as err:
        raise UserError(f"cannot write {target} ({err}): pass a .wav or .flac path") from None
    return header


def diffusion_pieces(
    source: str | Path,
    model: CompressionModel,
    codes: torch.Tensor,
    header: dict,
    diffusion_checkpoint: str | Path,
    steps: int,
    seed: int,
) -> list[torch.Tensor]:
    """The audio ``[(C, length)]`` of ``codes`` decoded by the diffusion decoder."""
    if model.config.normalize or len(model.segments(header["length"])) > 1:
        raise UserError(
            f"{source} was coded in normalised segments ({model.config.name}), which the diffusion "
            "decoder does not model: use --decoder codec"
        )
    diffusion = resolve_diffusion(diffusion_checkpoint, model, codes.shape[0])
    check_fits(diffusion, model, codes.shape[0])
    generator = torch.Generator().manual_seed(seed)
    wav = decode_tokens(diffusion, model, codes[None], header["length"], steps, generator, True)
    return [wav[0]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.decompress", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("source", help="the .ecdc file")
    parser.add_argument("target", help="audio file to write (WAV or FLAC)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="the codec the file was compressed with (saved codec directory, .ckpt or official .th)",
    )
    add_decoder_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the diffusion decoder")
    args = parser.parse_args(argv)
    try:
        decompress(
            args.source,
            args.target,
            args.checkpoint,
            decoder_checkpoint(args),
            args.diffusion_steps,
            args.seed,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
