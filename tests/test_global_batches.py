"""``loader.global_batches``: every rank reads the one-process stream of global batches and keeps
its contiguous slice, so 2 ranks x B items are, step by step, the 1-process batches of 2B
(same samples, crops and order) whatever the loader workers; the end-to-end check is
tests/test_ddp_presets.py (compression_tiny on 2 processes = 1 process)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from data.datamodule import MusicDataModule, SolverData, stream_skips
from data.decode import SampleSpec
from data.shardlist import split_shards
from data.streams import TrainStream, batch_part
from tests.fixtures.toy_shards import RATE

SPEC = SampleSpec(RATE, 1, 0.5, ("audio", "notes", "caption"))
BATCHES = 4


def first_batches(module: MusicDataModule, rank: int, world: int) -> list[dict]:
    module.trainer = SimpleNamespace(global_rank=rank, world_size=world, global_step=0)
    return list(itertools.islice(iter(module.train_dataloader()), BATCHES))


def datamodule(root: Path, batch_size: int, workers: int) -> MusicDataModule:
    requirements = SolverData(RATE, 1, 0.5, ("audio", "notes", "caption"))
    return MusicDataModule(
        "toy",
        str(root),
        ["audio", "stems", "notes", "caption"],
        requirements,
        batch_size=batch_size,
        num_workers=workers,
        shuffle_buffer=8,
        global_batches=True,
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_slices_make_the_one_process_batches(toy_dataset: Path, workers: int) -> None:
    whole = first_batches(datamodule(toy_dataset, 4, workers), 0, 1)
    halves = [first_batches(datamodule(toy_dataset, 2, workers), rank, 2) for rank in (0, 1)]
    for step, batch in enumerate(whole):
        parts = [halves[rank][step] for rank in (0, 1)]
        assert batch["key"] == parts[0]["key"] + parts[1]["key"]
        assert batch["caption"] == parts[0]["caption"] + parts[1]["caption"]
        assert torch.equal(batch["start"], torch.cat([p["start"] for p in parts]))
        assert torch.equal(batch["audio"], torch.cat([p["audio"] for p in parts]))
        notes = parts[0]["notes"] + parts[1]["notes"]
        assert all(torch.equal(a, b) for a, b in zip(batch["notes"], notes, strict=True))
    assert len({key for batch in whole for key in batch["key"]}) > 4  # the stream moves on


def test_without_global_batches_ranks_read_their_own_shards(toy_dataset: Path) -> None:
    module = datamodule(toy_dataset, 2, 0)
    module.global_batches = False
    keys = [{k for b in first_batches(module, rank, 2) for k in b["key"]} for rank in (0, 1)]
    assert not keys[0] & keys[1]


def test_only_rank_0_counts_the_shared_stream_skips(toy_dataset: Path) -> None:
    shards = split_shards(toy_dataset, "train")
    replica = TrainStream(shards, SPEC, 4, part=(1, 2))
    replica.skips.skip("undecodable_audio", shards[0], "x", "damaged")
    assert sum(stream_skips(SimpleNamespace(dataset=replica)).values()) == 0
    rank0 = TrainStream(shards, SPEC, 4, part=(0, 2))
    rank0.skips.skip("undecodable_audio", shards[0], "x", "damaged")
    assert sum(stream_skips(SimpleNamespace(dataset=rank0)).values()) == 1


def test_batch_part_and_uneven_parts() -> None:
    batch = {
        "key": list("abcd"),
        "audio": torch.arange(4.0)[:, None],
        "notes": [[1], [2], [3], [4]],
    }
    part = batch_part((1, 2), batch)
    assert part["key"] == ["c", "d"] and part["notes"] == [[3], [4]]
    assert torch.equal(part["audio"], torch.tensor([[2.0], [3.0]]))
    with pytest.raises(ValueError, match="evenly"):
        TrainStream(["x.tar"], SPEC, 3, part=(0, 2))
