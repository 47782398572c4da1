"""Uneven shards (5, 9 and 30 samples) on 2 ranks x 2 loader workers (issue 13): fewer shards than
readers, so the readers share them by samples; training never hangs and every rank runs the same
number of batches per epoch, and evaluation sees every sample exactly once."""

from __future__ import annotations

import itertools

import pytest
from torch.utils.data import DataLoader

from data.decode import SampleSpec
from data.shards import ShardWriter
from data.streams import EpochLoader, EvalStream, TrainStream
from tests.fixtures.toy_shards import RATE, toy_sample

SIZES = (5, 9, 30)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("uneven")
    keys = itertools.count()
    for part, size in enumerate(SIZES):
        with ShardWriter(out, f"part{part}", max_samples=100) as writer:
            for _ in range(size):
                i = next(keys)
                writer.write(f"s{i:03d}", *toy_sample(i, seconds=1.0))
    return [str(out / f"part{part}-000000.tar") for part in range(len(SIZES))]


@pytest.mark.timeout(120)  # a hang fails here
def test_training_ranks_run_equal_epochs(uneven: list[str]) -> None:
    spec = SampleSpec(RATE, 1, 0.5, ("audio",), "random")
    batches = []
    for rank in range(2):
        stream = TrainStream(uneven, spec, 2, shuffle_buffer=4, rank=rank, world_size=2)
        loader = EpochLoader(DataLoader(stream, batch_size=None, num_workers=2), 7, "uneven")
        batches.append([sum(len(b["key"]) for b in loader) for _ in range(3)])
    assert batches == [[14, 14, 14], [14, 14, 14]]


@pytest.mark.timeout(120)
def test_evaluation_sees_every_sample_once(uneven: list[str]) -> None:
    spec = SampleSpec(RATE, 1, 0.5, ("audio",), "start")
    seen = []
    for rank in range(2):
        stream = EvalStream(uneven, spec, 3, rank=rank, world_size=2)
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        seen += [key for batch in loader for key in batch["key"]]
    assert sorted(seen) == [f"s{i:03d}" for i in range(sum(SIZES))]
