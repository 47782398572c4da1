"""Planning, parallel rendering and writing of the synthetic dataset.

Example ``i`` takes its split from a fixed cycle (``train, valid, test`` then seven ``train``),
so even a tiny build fills all three splits, then a piece of that split from the generator
seeded by ``(seed, i)``. Examples are rendered in batches until their total duration reaches
the requested minutes; results come back in index order whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.prepare.synth.corpus import STYLES, Piece, pools
from data.prepare.synth.example import Example, ExampleSpec, init_worker, make_example
from data.prepare.synth.render import find_soundfont, load_fluidsynth
from data.shards import (
    DEFAULT_MIN_SHARDS,
    DEFAULT_SHARD_MB,
    SPLITS,
    STEMS,
    ShardWriter,
    read_index,
)

# About 80 % of the examples go to train: 160 minutes give a train split of over 2 hours (about
# 90 s to render on 2 cores).
DEFAULT_MINUTES = 160.0
DEFAULT_SEED = 0
DEFAULT_SAMPLE_RATE = 32000
EXPECTED_SECONDS = 22.0  # typical example duration, to size the batches
SPLIT_CYCLE = ("train", "valid", "test") + ("train",) * 7
_SHARD_NAME = re.compile(r"^(train|valid|test)-\d{6}\.tar$")


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def plan_example(seed: int, index: int, pieces: dict[str, dict[str, list[Piece]]]) -> ExampleSpec:
    """The split and piece of example ``index``: a function of ``(seed, index)`` only."""
    split = SPLIT_CYCLE[index % len(SPLIT_CYCLE)]
    rng = np.random.default_rng([seed, index, 0])
    by_style = pieces[split]
    styles = [s for s in STYLES if by_style.get(s)]
    weights = np.asarray([STYLES[s].weight for s in styles])
    style = styles[int(rng.choice(len(styles), p=weights / weights.sum()))]
    return ExampleSpec(index, seed, split, by_style[style][int(rng.integers(len(by_style[style])))])


@contextlib.contextmanager
def _mapper(
    workers: int, sample_rate: int
) -> Iterator[Callable[[list[ExampleSpec]], Iterator[Example]]]:
    """An ordered map of :func:`make_example`: in this process for one worker, else a spawned pool
    (spawn, because the caller may hold threads, e.g. a training process)."""
    soundfont = str(find_soundfont())
    load_fluidsynth()  # fail here, clearly: a pool whose initializer fails respawns forever
    if workers == 1:
        init_worker(soundfont, sample_rate)
        try:
            yield lambda specs: map(make_example, specs)
        finally:
            init_worker(None, sample_rate)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=init_worker, initargs=(soundfont, sample_rate)) as pool:
        yield lambda specs: pool.imap(make_example, specs)


def render_examples(
    seed: int, seconds: float, workers: int, sample_rate: int, dropped: list[str] | None = None
) -> Iterator[Example]:
    """Examples ``0, 1, ...`` in order, until their durations add up to ``seconds``; the keys of
    those dropped for a silent stretch are appended to ``dropped``."""
    pieces = pools()
    done, index = 0.0, 0
    estimate = math.ceil(seconds / EXPECTED_SECONDS)
    with (
        _mapper(workers, sample_rate) as mapper,
        tqdm(total=estimate, desc="synth", unit="example") as progress,
    ):
        while done < seconds:
            count = max(workers, math.ceil((seconds - done) / EXPECTED_SECONDS))
            progress.total = max(progress.total, progress.n + count)
            specs = [plan_example(seed, i, pieces) for i in range(index, index + count)]
            index += count
            for spec, example in zip(specs, mapper(specs), strict=True):
                progress.update(1)
                if example is None:
                    if dropped is not None:
                        dropped.append(spec.key)
                    continue
                yield example
                done += example.seconds
                if done >= seconds:
                    break
        progress.total = progress.n


def _check(minutes: float, seed: int, sample_rate: int, workers: int) -> None:
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"--minutes must be a positive number of minutes, got {minutes}")
    if seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed}")
    if not 8000 <= sample_rate <= 96000:
        raise ValueError(
            f"--sample-rate must lie between 8000 and 96000 Hz (FluidSynth's range), got {sample_rate}"
        )
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")


def _publish(staging: Path, out: Path) -> None:
    """Replace the dataset in ``out`` with the one in ``staging``; ``index.json`` goes last, so an
    interrupted build never looks finished."""
    for path in out.iterdir():
        if path.name == "index.json" or _SHARD_NAME.match(path.name):
            path.unlink()
    for path in sorted(staging.glob("*.tar")):
        os.replace(path, out / path.name)
    os.replace(staging / "index.json", out / "index.json")
    staging.rmdir()


def build_synth(
    out_dir: str | Path,
    minutes: float = DEFAULT_MINUTES,
    seed: int = DEFAULT_SEED,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    workers: int | None = None,
    shard_mb: float = DEFAULT_SHARD_MB,
    min_shards: int = DEFAULT_MIN_SHARDS,
) -> dict:
    """Render about ``minutes`` of examples into shards under ``out_dir``; returns ``index.json``.
    Each split goes into at least ``min_shards`` shards (when it has that many examples) of at
    most about ``shard_mb`` MB.

    Shards and the index of an earlier build in ``out_dir`` are replaced.
    """
    workers = default_workers() if workers is None else workers
    _check(minutes, seed, sample_rate, workers)
    out = Path(out_dir)
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    info = {
        "dataset": "synth",
        "sample_rate": sample_rate,
        "channels": 1,
        "stems": list(STEMS),
        "build": {"minutes": minutes, "seed": seed, "soundfont": find_soundfont().name},
    }
    sharding = {"max_bytes": round(shard_mb * 2**20), "min_shards": min_shards}
    writers = {split: ShardWriter(staging, split, extra_index=info, **sharding) for split in SPLITS}
    dropped: list[str] = []
    for example in render_examples(seed, minutes * 60.0, workers, sample_rate, dropped):
        writers[example.split].write(example.key, example.members, example.seconds)
    info["build"]["dropped_silent"] = dropped  # a silent stretch as long as the shortest crop
    for writer in writers.values():
        writer.close()
    _publish(staging, out)
    return read_index(out)
