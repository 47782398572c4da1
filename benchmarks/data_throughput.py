"""Pipeline decode throughput against raw ``soundfile`` decoding of the same shards, in one run.

    python benchmarks/data_throughput.py [--root datasets/synth] [--split train] [--repeats 3]

Without ``--root`` (or if it is not prepared) a toy dataset of 20-second samples is written to a
temporary folder. Prints a table and one JSON line; ``ratio`` is pipeline speed / raw speed for
one worker (the target is >= 0.8).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import soundfile as sf
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from data.decode import AUDIO_EXTENSIONS, SampleSpec
from data.shardlist import split_shards
from data.streams import EvalStream


def raw_decode(shards: list[str]) -> tuple[int, float]:
    """Read each mix member out of the tars and decode it whole with soundfile."""
    samples, seconds = 0, 0.0
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                base = Path(member.name).name
                if base.split(".", 1)[-1] in AUDIO_EXTENSIONS:
                    data, rate = sf.read(
                        io.BytesIO(tar.extractfile(member).read()), dtype="float32"
                    )
                    samples, seconds = samples + 1, seconds + len(data) / rate
    return samples, seconds


def pipeline_decode(shards: list[str], rate: int, channels: int, workers: int) -> tuple[int, float]:
    spec = SampleSpec(rate, channels, None, ("audio",), "none")
    loader = DataLoader(
        EvalStream(shards, spec, batch_size=1), batch_size=None, num_workers=workers
    )
    samples, seconds = 0, 0.0
    for batch in loader:
        samples, seconds = samples + 1, seconds + batch["audio"].shape[-1] / rate
    return samples, seconds


def timed(fn, repeats: int) -> tuple[int, float, float]:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        samples, seconds = fn()
        best = min(best, time.perf_counter() - start)
    return samples, seconds, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="datasets/synth")
    parser.add_argument("--split", default="train")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.root)
    if not (root / "index.json").exists():
        from tests.fixtures.toy_shards import write_toy_dataset

        root = write_toy_dataset(
            Path(tempfile.mkdtemp()) / "toy", {args.split: 24}, per_shard=8, seconds=20.0
        )
    shards = split_shards(root, args.split)
    with sf.SoundFile(io.BytesIO(_first_audio(shards[0]))) as f:
        rate, channels = f.samplerate, f.channels
    rows = [("raw soundfile", *timed(lambda: raw_decode(shards), args.repeats))]
    for workers in (0, 2):
        label = "pipeline, in process" if workers == 0 else f"pipeline, {workers} workers"
        rows.append(
            (
                label,
                *timed(lambda w=workers: pipeline_decode(shards, rate, channels, w), args.repeats),
            )
        )
    print(
        f"{'reader':<24}{'samples':>9}{'audio s':>10}{'wall s':>9}{'audio s/s':>11}{'samples/s':>11}"
    )
    for label, samples, seconds, wall in rows:
        print(
            f"{label:<24}{samples:>9}{seconds:>10.1f}{wall:>9.3f}{seconds / wall:>11.1f}{samples / wall:>11.1f}"
        )
    raw_speed, one_worker = rows[0][2] / rows[0][3], rows[1][2] / rows[1][3]
    print(
        json.dumps(
            {
                "benchmark": "data_throughput",
                "root": str(root),
                "split": args.split,
                "sample_rate": rate,
                "raw_audio_s_per_s": round(raw_speed, 1),
                "pipeline_audio_s_per_s": round(one_worker, 1),
                "pipeline_2workers_audio_s_per_s": round(rows[2][2] / rows[2][3], 1),
                "pipeline_samples_per_s": round(rows[1][1] / rows[1][3], 2),
                "ratio": round(one_worker / raw_speed, 3),
                "target_ratio": 0.8,
            }
        )
    )


def _first_audio(shard: str) -> bytes:
    with tarfile.open(shard) as tar:
        for member in tar:
            if Path(member.name).name.split(".", 1)[-1] in AUDIO_EXTENSIONS:
                return tar.extractfile(member).read()
    raise SystemExit(f"no audio in {shard}")


if __name__ == "__main__":
    main()
