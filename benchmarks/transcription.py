"""MT3 transcription speed on CPU: audio seconds transcribed per second, with and without the KV cache.

    python benchmarks/transcription.py [--seconds 20] [--tokens 96] [--threads 1]
                                       [--checkpoint PATH --audio FILE]

Models: the ``experiment=mt3_tiny`` preset and MT3-small, randomly initialised; every segment is
decoded to exactly ``--tokens`` tokens (EOS suppressed; 96 is the mean target length of a
``dataset=synth`` segment) so that the two decoders do the same work. ``--checkpoint`` adds a
trained model decoded the real way (up to EOS; a last row as ``experiment=mt3_tiny`` decodes:
the grammar, at most 512 tokens, with log-probabilities), best with ``--audio`` (real music;
default noise). The uncached decoder (the whole prefix
recomputed at every step) is the in-run reference; ``speedup`` is uncached / cached time. Time
is split into front end + encoder vs decoder. A third row per model decodes with the ``full``
token grammar (``--grammar``/``constrained_decoding``) to show its cost. Prints a table and one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import soundfile as sf
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from musicgen.audio import convert_audio
from musicgen.transcription.frontend import LogMelFrontend, split_track
from musicgen.transcription.model import MT3Config, MT3Model
from musicgen.transcription.transcriber import Transcriber
from musicgen.transcription.vocabulary import EOS_ID, PAD_ID

TINY_PRESET = Path(__file__).resolve().parents[1] / "conf" / "experiment" / "mt3_tiny.yaml"


def tiny_config() -> MT3Config:
    model = OmegaConf.to_container(OmegaConf.load(TINY_PRESET).solver.module.model)
    return MT3Config.from_dict(model)


def timed(fn, *args) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


@torch.no_grad()
def measure(
    model: MT3Model,
    audio: torch.Tensor,
    tokens: int,
    use_cache: bool,
    batch: int,
    grammar: str | None = None,
    log_probs: bool = False,
) -> dict:
    """Seconds in front end + encoder and in decoding for the whole track, and tokens decoded;
    ``log_probs``: greedy decoding also returns each token's log-probability (what
    ``min_onset_probability`` needs)."""
    frontend = LogMelFrontend()
    segments, frames = split_track(audio)
    encode = decode = 0.0
    decoded = 0
    for start in range(0, len(segments), batch):
        inputs, t_front = timed(
            frontend, segments[start : start + batch], frames[start : start + batch]
        )
        encoded, t_enc = timed(model.encoder, inputs)
        out, t_dec = timed(model.greedy_decode, encoded, tokens, use_cache, grammar, log_probs)
        out = out[0] if log_probs else out
        encode, decode = encode + t_front + t_enc, decode + t_dec
        decoded += int(((out != PAD_ID) & (out != EOS_ID)).sum())
    return {"encode_s": encode, "decode_s": decode, "tokens_per_segment": decoded / len(segments)}


def row(
    name: str,
    model: MT3Model,
    audio: torch.Tensor,
    seconds: float,
    tokens: int,
    use_cache: bool,
    batch: int,
    grammar: str | None = None,
    log_probs: bool = False,
) -> dict:
    result = measure(model, audio, tokens, use_cache, batch, grammar, log_probs)
    total = result["encode_s"] + result["decode_s"]
    return {
        "model": name,
        "kv_cache": use_cache,
        "grammar": grammar or "-",
        "log_probs": log_probs,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "audio_s": seconds,
        "wall_s": round(total, 3),
        "x_realtime": round(seconds / total, 2),
        "encoder_share": round(result["encode_s"] / total, 3),
        "decoder_share": round(result["decode_s"] / total, 3),
        "tokens_per_segment": round(result["tokens_per_segment"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="audio length (default 20 s)")
    parser.add_argument(
        "--tokens", type=int, default=96, help="tokens decoded per segment (default 96)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--batch", type=int, default=32, help="segments decoded together (default 32)"
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="also time a trained model, decoded up to EOS"
    )
    parser.add_argument(
        "--audio", type=Path, default=None, help="audio file to transcribe (default: noise)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.audio:
        try:
            wav, rate = sf.read(str(args.audio), dtype="float32", always_2d=True)
        except sf.LibsndfileError as err:
            parser.error(f"--audio {args.audio}: not an audio file soundfile can read ({err})")
        audio = convert_audio(torch.from_numpy(wav.T.copy()), rate, 16000, 1)[0]
        audio = audio[: int(args.seconds * 16000)]
    else:
        audio = 0.1 * torch.randn(int(args.seconds * 16000))
    seconds = audio.shape[0] / 16000
    rows = []
    for name, cfg in (("tiny", tiny_config()), ("mt3-small", MT3Config())):
        model = MT3Model(cfg).eval()
        with torch.no_grad():
            model.decoder.logits_dense.weight[EOS_ID] = 0.0  # EOS logit 0: never the argmax
        measure(model, audio[:16000], 4, True, args.batch)  # warm-up
        for use_cache in (True, False):
            rows.append(row(name, model, audio, seconds, args.tokens, use_cache, args.batch))
        rows.append(row(name, model, audio, seconds, args.tokens, True, args.batch, "full"))
    if args.checkpoint:
        trained = Transcriber.from_checkpoint(args.checkpoint).model
        for use_cache in (True, False):
            rows.append(row("trained", trained, audio, seconds, 1024, use_cache, args.batch))
        # decoded as experiment=mt3_tiny evaluates: the grammar, log-probabilities for the
        # unsure-onset filter (its other decoding steps work on notes and cost next to nothing)
        rows.append(row("trained", trained, audio, seconds, 512, True, args.batch, "full", True))
    columns = list(rows[0])
    print(" | ".join(columns))
    for r in rows:
        print(" | ".join(str(r[c]) for c in columns))
    speedups = {
        name: round(
            next(r["wall_s"] for r in rows if r["model"] == name and not r["kv_cache"])
            / next(
                r["wall_s"]
                for r in rows
                if r["model"] == name and r["kv_cache"] and r["grammar"] == "-"
            ),
            2,
        )
        for name in dict.fromkeys(r["model"] for r in rows)
    }
    print(
        json.dumps(
            {
                "benchmark": "transcription",
                "threads": args.threads,
                "tokens": args.tokens,
                "speedup_kv_cache": speedups,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
