"""Generate music from a caption (and a melody) with a trained MusicGen.

    python -m musicgen.generate --checkpoint PATH --text "a calm chorale" --duration 8 --out out.wav
    python -m musicgen.generate --checkpoint PATH --text "..." --melody in.wav --out out.wav
    python -m musicgen.generate --model DIR --text "..." [--melody in.wav] --out out.wav
    python -m musicgen.generate --checkpoint PATH --text "..." --out out.wav \
        --decoder diffusion --diffusion-checkpoint MBD [--diffusion-steps 20]

``PATH`` is a ``train.py`` checkpoint of ``solver=musicgen`` or ``solver=musicgen_melody`` (its
EMA weights when it has them). The melody is resampled to the model's rate, cropped or repeated
to ``--duration``, and goes through the model's stemmer; a model trained with the ``oracle``
stemmer (the dataset's own stems) takes the file as the already-separated melody. Folders of
pretrained parts the checkpoint names inside the training's ``paths.weights_dir`` are looked up
in ``--weights-dir`` (default ``MUSICGEN_WEIGHTS`` or ``./weights``); ``--text-encoder``,
``--stemmer`` and ``--demucs-repo`` replace them. ``--model DIR`` is a released MusicGen folder
instead (AudioCraft's ``state_dict.bin`` + ``compression_state_dict.bin``, or a transformers
download; text-only or melody, mono or stereo; see :meth:`MusicGen.from_pretrained`):
``--text-encoder`` names the T5 folder of an AudioCraft release, ``--codec`` a transformers
EnCodec folder when its codec file only names one. ``--decoder diffusion`` decodes the tokens with a
MultiBand Diffusion decoder (``MBD``: a ``train.py`` checkpoint of ``solver=diffusion`` or
AudioCraft's released weights) instead of the codec. The LM's linear layers are converted for
generation (:meth:`musicgen.lm.MusicLM.for_generation`, in place): ``--precision float32`` (the
default) packs their weights with oneDNN on the CPU (the same float32 maths, about 2x faster
decoding at batch 1), ``bfloat16|int8`` runs them in bf16 or dynamic int8 (faster still,
slightly different tokens).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile as sf
import torch

from musicgen.compress import read_audio
from musicgen.diffusion.checkpoint import FIX
from musicgen.diffusion.cli import add_decoder_arguments, decoder_checkpoint
from musicgen.errors import UserError
from musicgen.musicgen_model import MusicGen


def generate(
    checkpoint: str | Path | None,
    text: str,
    out: str | Path,
    duration: float = 8.0,
    melody: str | Path | None = None,
    cfg_coef: float = 3.0,
    top_k: int = 250,
    top_p: float = 0.0,
    temperature: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
    extend_stride: float | None = None,
    local: dict | None = None,
    diffusion_checkpoint: str | Path | None = None,
    diffusion_steps: int = 20,
    model_dir: str | Path | None = None,
    precision: str = "float32",
) -> tuple[torch.Tensor, int]:
    """Write ``out`` (16-bit WAV at the model's rate); returns its audio ``(C, T)`` and rate.
    ``local``: this machine's folders for the pretrained parts (``weights_dir``, ``text_dir``,
    ``stemmer``, ``demucs_repo``: see :meth:`MusicGen.from_checkpoint`). With
    ``diffusion_checkpoint`` the tokens are decoded by that MultiBand Diffusion decoder. With
    ``model_dir`` (a released MusicGen folder) instead of ``checkpoint``, ``local`` may hold
    ``text_dir``, ``stemmer``, ``demucs_repo`` and ``codec_dir`` (see
    :meth:`MusicGen.from_pretrained`)."""
    if precision == "int8" and torch.device(device).type != "cpu":
        raise UserError(f"--precision int8 runs on the CPU only, not on {device}")
    if diffusion_checkpoint is not None and not Path(diffusion_checkpoint).exists():
        raise UserError(f"diffusion checkpoint {diffusion_checkpoint} does not exist: {FIX}")
    local = local or {}
    if model_dir is not None:
        options = ("text_dir", "stemmer", "demucs_repo", "codec_dir")
        model = MusicGen.from_pretrained(model_dir, device, **{k: local.get(k) for k in options})
    else:
        local = {k: v for k, v in local.items() if k != "codec_dir"}
        model = MusicGen.from_checkpoint(checkpoint, device, **local)
    model.lm = model.lm.for_generation(precision, inplace=True)  # float32: packed on the CPU
    wav = stems = None
    if melody is not None:
        wav = read_audio(melody, model.sample_rate, model.channels)[None]
        stems = model.melody_as_stems(wav)
    generator = torch.Generator(device).manual_seed(seed)
    audio = model.generate(
        [text],
        wav,
        model.sample_rate,
        duration,
        melody_stems=stems,
        cfg_coef=cfg_coef,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        progress=True,
        extend_stride=extend_stride,
        decoder="codec" if diffusion_checkpoint is None else "diffusion",
        diffusion=diffusion_checkpoint,
        diffusion_steps=diffusion_steps,
    )[0]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, audio.clamp(-1, 1).T.cpu().numpy(), model.sample_rate, subtype="PCM_16")
    return audio, model.sample_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.generate", description=__doc__.split("\n\n")[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="train.py .ckpt of solver=musicgen*")
    source.add_argument("--model", help="released MusicGen folder (AudioCraft or transformers)")
    parser.add_argument("--text", required=True, help="the caption")
    parser.add_argument("--melody", default=None, help="audio file whose melody to follow")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds (default 8)")
    parser.add_argument("--out", required=True, help="WAV file to write")
    parser.add_argument("--cfg", type=float, default=3.0, help="guidance coefficient (1: off)")
    parser.add_argument("--top-k", type=int, default=250, help="top-k sampling (default 250)")
    parser.add_argument("--top-p", type=float, default=0.0, help="top-p; > 0 overrides top-k")
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--extend-stride",
        type=float,
        default=None,
        help="beyond the training segment, windows advance by this many seconds (default: half a "
        "segment; 18 for --model, as AudioCraft)",
    )
    parser.add_argument(
        "--weights-dir",
        default=None,
        help="folder of pretrained weights the checkpoint's ${paths.weights_dir} references "
        "point into (default: MUSICGEN_WEIGHTS or ./weights)",
    )
    parser.add_argument("--text-encoder", default=None, help="text encoder folder to use instead")
    parser.add_argument(
        "--stemmer", choices=("demucs", "oracle", "none"), default=None, help="melody stemmer"
    )
    parser.add_argument("--demucs-repo", default=None, help="local Demucs folder to use instead")
    parser.add_argument(
        "--codec", default=None, help="with --model: a transformers EnCodec folder for the codec"
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "int8"),
        default="float32",
        help="the LM's linear layers (float32: oneDNN-packed on the CPU, same maths, ~2x faster "
        "decoding; bfloat16, int8: faster still, slightly different tokens)",
    )
    add_decoder_arguments(parser)
    args = parser.parse_args(argv)
    local = {
        "weights_dir": args.weights_dir,
        "text_dir": args.text_encoder,
        "stemmer": args.stemmer,
        "demucs_repo": args.demucs_repo,
        "codec_dir": args.codec,
    }
    try:
        diffusion_checkpoint = decoder_checkpoint(args)
        audio, rate = generate(
            args.checkpoint,
            args.text,
            args.out,
            args.duration,
            args.melody,
            args.cfg,
            args.top_k,
            args.top_p,
            args.temperature,
            args.seed,
            args.device,
            args.extend_stride,
            local,
            diffusion_checkpoint,
            args.diffusion_steps,
            args.model,
            precision=args.precision,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {audio.shape[-1] / rate:.2f} s at {rate} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
