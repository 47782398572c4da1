"""``python -m data.prepare synth``: the synthetic multi-instrument dataset.

Pieces of the ``music21`` corpus (Bach chorales, Palestrina, Haydn/Mozart/Beethoven quartets,
folk tunes) are arranged for General-MIDI instruments (varied tempo, transposition, humanised
velocities, sometimes drums), rendered by FluidSynth into a mix and four stems, and written as
shards with the notes (``.mid``) and a caption. Modules: ``corpus`` (pieces, splits),
``notation`` (score reduction), ``harmony``, ``drums``, ``instruments``, ``arrange``,
``render``, ``captions``, ``example`` (one sample), ``build`` (the whole dataset).
"""

from __future__ import annotations

import argparse

from data.prepare.synth.build import (
    DEFAULT_MINUTES,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_SEED,
    build_synth,
    default_workers,
)
from data.shards import SPLITS

HELP = "render the synthetic multi-instrument dataset (music21 corpus + FluidSynth)"

# The data module builds a missing dataset with ``data.prepare.<builder>.build(root, **options)``.
build = build_synth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="output directory for the shards and index.json"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        help="approximate total audio, all splits (default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="arrangement seed (splits do not depend on it; default %(default)s)",
    )
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=DEFAULT_SAMPLE_RATE,
        help="sample rate of the mono FLAC files (default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="rendering processes (default %(default)s)",
    )


def run(args: argparse.Namespace) -> None:
    index = build_synth(
        args.out,
        args.minutes,
        args.seed,
        args.sample_rate,
        args.workers,
        args.shard_mb,
        args.min_shards,
    )
    splits = index["splits"]
    total = sum(s["total_seconds"] for s in splits.values()) / 60
    counts = ", ".join(f"{name} {splits[name]['num_samples']}" for name in SPLITS if name in splits)
    print(f"wrote {total:.1f} minutes of audio to {args.out} ({counts} examples)")
