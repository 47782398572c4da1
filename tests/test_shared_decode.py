"""Loader workers write audio and stems into shared memory themselves (data.shared_memory): the
values are the in-process ones bit for bit, and PyTorch sends the tensor without moving it."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from data.decode import SampleSpec
from data.shardlist import split_shards
from data.shared_memory import to_shared
from data.streams import EvalStream
from tests.fixtures.toy_shards import RATE


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(2, 1000),
        torch.randn(1000, 2).T,  # a transposed (C, T) view of frames read as (T, C)
        torch.randn(4, 3, 500)[:, 1, 100:400],  # a crop of a larger tensor
        torch.arange(7, dtype=torch.float64),
        torch.randn(3, 5).to(torch.bfloat16),
        torch.tensor(2.5),
    ],
)
def test_to_shared_keeps_values_in_its_own_shared_storage(tensor: torch.Tensor) -> None:
    shared = to_shared(tensor)
    assert shared.is_shared() and not tensor.is_shared()
    assert shared.dtype == tensor.dtype and shared.shape == tensor.shape
    assert torch.equal(shared, tensor)
    assert shared.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    address = shared.untyped_storage().data_ptr()
    sent = pickle.loads(ForkingPickler.dumps(shared))  # what a worker's queue does
    assert shared.untyped_storage().data_ptr() == address, "sending must not move it again"
    assert torch.equal(sent, tensor)
    assert to_shared(shared) is shared


def test_to_shared_leaves_an_empty_tensor() -> None:
    empty = torch.zeros(0, 4)
    assert to_shared(empty) is empty


class _Flagged(IterableDataset):
    """The stream's batches with, per tensor field, whether it was shared before being sent."""

    def __init__(self, stream: EvalStream) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[dict]:
        for batch in self.stream:
            batch["shared_in_worker"] = [batch[f].is_shared() for f in ("audio", "stems")]
            yield batch


@pytest.mark.parametrize(("segment", "crop", "batch_size"), [(None, "none", 1), (0.5, "center", 2)])
def test_worker_batches_equal_in_process_ones_bit_for_bit(
    toy_dataset: Path, segment: float | None, crop: str, batch_size: int
) -> None:
    spec = SampleSpec(RATE, 1, segment, ("audio", "stems"), crop)
    shards = split_shards(toy_dataset, "valid")
    in_process = list(EvalStream(shards, spec, batch_size))
    loader = DataLoader(
        _Flagged(EvalStream(shards, spec, batch_size)), batch_size=None, num_workers=1
    )
    from_worker = list(loader)
    assert [b["key"] for b in from_worker] == [b["key"] for b in in_process]
    for got, want in zip(from_worker, in_process, strict=True):
        assert got["shared_in_worker"] == [True, True]
        for field in ("audio", "stems", "start"):
            assert got[field].dtype == want[field].dtype
            assert torch.equal(got[field].view(torch.uint8), want[field].view(torch.uint8))
    assert not any(b["audio"].is_shared() for b in in_process), "only workers share"
