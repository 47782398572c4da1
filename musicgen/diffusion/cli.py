"""The ``--decoder``/``--diffusion-checkpoint``/``--diffusion-steps`` options shared by
``python -m musicgen.generate`` and ``python -m musicgen.decompress``."""

from __future__ import annotations

import argparse

from musicgen.errors import UserError


def add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the decoder options to ``parser``."""
    parser.add_argument(
        "--decoder",
        choices=("codec", "diffusion"),
        default="codec",
        help="decode the tokens with the codec (default) or a MultiBand Diffusion decoder",
    )
    parser.add_argument(
        "--diffusion-checkpoint",
        default=None,
        help="the diffusion decoder: a train.py .ckpt of solver=diffusion, or AudioCraft's "
        "released MBD file (mbd_musicgen_32khz.th, mbd_comp_<n>.pt) or its folder",
    )
    parser.add_argument(
        "--diffusion-steps", type=int, default=20, help="denoising steps per band (default 20)"
    )


def decoder_checkpoint(args: argparse.Namespace) -> str | None:
    """The diffusion checkpoint to decode with (None: the codec); a UserError for options that
    do not go together."""
    if args.decoder == "diffusion" and args.diffusion_checkpoint is None:
        raise UserError("--decoder diffusion needs --diffusion-checkpoint PATH")
    if args.decoder == "codec" and args.diffusion_checkpoint is not None:
        raise UserError("--diffusion-checkpoint is only used with --decoder diffusion: add it")
    if not 1 <= args.diffusion_steps <= 1000:
        raise UserError(f"--diffusion-steps must be in [1, 1000], got {args.diffusion_steps}")
    return args.diffusion_checkpoint if args.decoder == "diffusion" else None
