"""Transcribe audio to MIDI with an MT3 model: ``python -m musicgen.transcribe in.wav out.mid --checkpoint PATH``.

``PATH`` is an exported model directory (``model.safetensors`` + ``config.json``), a ``.ckpt``
of ``train.py solver=mt3``, a t5x checkpoint directory as released for MT3 (``mt3`` or
``ismir2021``: its ``checkpoint`` file and the arrays beside it), or a ``.npz`` of t5x parameters.
The model type (segments, vocabulary, decoding) follows the vocabulary size unless
``--model-type`` names it.
Any format ``soundfile`` reads works as input; it is resampled to 16 kHz mono.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile as sf

from musicgen.errors import UserError
from musicgen.transcription.transcriber import MODEL_TYPES, Transcriber
from musicgen.transcription.vocabulary import GRANULARITIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.transcribe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("audio", type=Path, help="input audio file (WAV, FLAC, OGG, MP3, ...)")
    parser.add_argument("midi", type=Path, help="output MIDI file")
    parser.add_argument("--checkpoint", type=Path, required=True, help="model to transcribe with")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="segments decoded together (default: 32)"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=1024,
        help="most tokens per segment (default: 1024, MT3's)",
    )
    parser.add_argument(
        "--grammar",
        choices=GRANULARITIES,
        help="mask tokens the model type's targets never hold (MT3's or the piano model's token "
        "format), for a model trained with this program granularity (the piano model: flat; "
        "helps small models; default: MT3's plain greedy decoding)",
    )
    parser.add_argument(
        "--merge-repeats-ms",
        type=float,
        default=0.0,
        help="merge same-pitch onsets (same program) less than this many ms apart into one note "
        "(helps small models that repeat a note; default: 0, MT3's decoding)",
    )
    parser.add_argument(
        "--min-onset-prob",
        type=float,
        default=0.0,
        help="leave out note onsets the model gave less than this probability (in [0, 1); helps "
        "small models that emit unsure notes; default: 0, MT3's decoding)",
    )
    parser.add_argument(
        "--model-type",
        choices=sorted(MODEL_TYPES),
        help="mt3 (multi-instrument, 256-frame segments, ties) or ismir2021 (piano, 512 frames, "
        "127 velocities, no ties) (default: read from the vocabulary size)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.merge_repeats_ms >= 0:
            raise UserError(f"--merge-repeats-ms {args.merge_repeats_ms} must be >= 0 ms")
        if not 0 <= args.min_onset_prob < 1:
            raise UserError(f"--min-onset-prob {args.min_onset_prob} must be in [0, 1)")
        if not args.audio.is_file():
            raise UserError(f"audio file {args.audio} does not exist: pass the path of a recording")
        try:
            wav, rate = sf.read(str(args.audio), dtype="float32", always_2d=True)
        except sf.SoundFileError as err:
            raise UserError(f"cannot read {args.audio} ({err}): convert it to WAV or FLAC") from err
        transcriber = Transcriber.from_checkpoint(
            args.checkpoint,
            device=args.device,
            batch_size=args.batch_size,
            max_length=args.max_length,
            grammar=args.grammar,
            model_type=args.model_type,
            merge_repeats=args.merge_repeats_ms / 1000,
            min_onset_probability=args.min_onset_prob,
        )
        midi = transcriber.transcribe(wav.T, rate)
        args.midi.parent.mkdir(parents=True, exist_ok=True)
        midi.write(str(args.midi))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    notes = sum(len(inst.notes) for inst in midi.instruments)
    print(f"wrote {notes} notes on {len(midi.instruments)} instruments to {args.midi}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
