"""Iterable datasets over shards: an endless shuffled training stream and a finite evaluation stream,
each a webdataset :class:`~webdataset.DataPipeline` per reader (rank x DataLoader worker).

Both take the distributed ``rank`` and ``world_size`` explicitly (the DataModule reads them
from the trainer) and the DataLoader worker from ``torch.utils.data.get_worker_info()``.

What webdataset does: the pipeline itself (``DataPipeline``), shard lists and their seeded
shuffling (``SimpleShardList``), splitting a rank's shards over its loader workers
(``split_by_worker``), the sample shuffle buffer (``shuffle``) and batching (``batched``).
What we add, each where it is used, with the reason: splitting by rank with the trainer's rank,
sample-level splitting when there are fewer shards than readers, reading tars by header (data.tar_reader),
counting skips by reason, decoding without pickle (data.decode), whole passes instead of
resampling, epochs cut from one long-lived loader iterator (:class:`EpochLoader`), and each
rank's slice of global batches (:func:`batch_part`: splitting shards or samples, as webdataset
does, gives each world size other batches).

* Training: the shards are split over ranks and each rank's over its loader workers (when
  there are fewer shards than readers, every reader reads all shards and keeps its own share of
  their samples, skipping the others' unread: :func:`sample_share`), each reader cycles through
  its shards endlessly in a new random order per pass, crops at random, and shuffles samples
  in a buffer. Being endless, the loader is cut into epochs of a fixed number of batches
  (:class:`EpochLoader`), so every rank runs the same number of steps. A reader whose own shards
  give no usable sample in a whole pass (unreadable, not a tar, every sample bad) reads all the
  shards instead, like a reader with no shard of its own; only when no shard gives a sample does
  it yield nothing, and then no reader of any rank has anything either: the epoch loader stops the
  run with one error naming the dataset.
* Evaluation: every reader walks all shards in order and keeps its share of the samples
  (:func:`sample_share`), skipping the others' by their tar headers without reading them: each
  sample is seen exactly once across ranks and workers, in a deterministic order.

Each stream counts its skipped samples in a :class:`data.skips.SharedSkips` (``stream.shared``)
that its loader workers add to, so the main process reads the totals of all of them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator
from functools import partial

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.decode import SampleSpec, SkipSample, decode_sample, wanted_members
from data.shared_memory import to_shared
from data.skips import SharedSkips, SkipCounter, skip_summary
from data.tar_reader import iter_tar_samples
from musicgen.errors import UserError

log = logging.getLogger(__name__)


def reader_index(rank: int, world_size: int) -> tuple[int, int]:
    """This reader's number and the number of readers (``rank x loader workers``); it seeds the
    reader's random streams and picks its share of the samples (:func:`sample_share`)."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world_size * workers


def own_shards(shards: list[str], rank: int, world_size: int) -> list[str]:
    """This reader's shards: the rank's ``shards[rank::world_size]``, split over its loader
    workers by webdataset's ``split_by_worker`` (which takes the worker from PyTorch, or from
    ``$WORKER``/``$NUM_WORKERS`` when both are set)."""
    # our rank split: wds.split_by_node takes the rank from $RANK or torch.distributed, while the
    # streams get the trainer's rank explicitly (ranks are also simulated in one process in tests)
    return list(wds.split_by_worker(shards[rank::world_size]))


def sample_share(shards: list[str], reader: int, readers: int) -> Callable[[str], Callable]:
    """Sample-level splitting for readers that share shards: sample ``j`` of the ``s``-th shard
    belongs to reader ``(s + j) % readers``, so each sample has exactly one reader. Returns, per
    shard, the ``keep(j)`` test of this reader (the others' samples are skipped unread)."""
    # our own: webdataset splits only whole shards (split_by_node/split_by_worker), so readers
    # beyond the shard count would get nothing or, reading all, duplicate every sample
    number = {shard: s for s, shard in enumerate(shards)}
    return lambda shard: lambda j: (number[shard] + j) % readers == reader


def shard_passes(shards: list[str], rng: random.Random, skips: SkipCounter) -> Iterator[dict]:
    """``{"url": shard}`` for ``shards`` in a new random order per pass (webdataset's
    ``SimpleShardList`` with a seed drawn per pass), until a pass gives no usable sample."""
    # whole passes, not wds.ResampledShards: drawing with replacement sees samples unevenly and
    # never tells when every shard has failed (the fall-back and the final error need that)
    while True:
        before = skips.samples
        yield from wds.SimpleShardList(shards, seed=rng.random())
        if skips.samples == before:
            return


def decoded_samples(
    shards: Iterable[str | dict],
    spec: SampleSpec,
    rng: np.random.Generator,
    skips: SkipCounter,
    keep: Callable[[str], Callable[[int], bool]] | None = None,
    reports: Callable[[str], bool] = lambda shard: True,
) -> Iterator[dict]:
    """Read and decode the samples of ``shards`` (paths, or webdataset's ``{"url": path}``); bad
    ones are counted in ``skips`` and dropped.

    ``keep(shard)(j)`` selects the ``j``-th sample of ``shard`` before it is read (see
    :func:`sample_share`). ``reports(shard)`` says whether this reader counts the shard's own
    problems (damage), which every reader of the shard meets: readers sharing shards pick one
    each. An unsafe key is counted by the reader whose sample it is.
    """
    # our own decoding (data.decode): soundfile/json/pretty_midi only, never wds's pickle-capable
    # decoders, and every rejection counted by reason rather than left to a handler
    wanted = wanted_members(spec)
    for item in shards:
        shard = item["url"] if isinstance(item, dict) else item

        def on_error(reason: str, key: str | None, err: Exception, shard: str = shard) -> None:
            if reason == "unsafe_key" and keep is not None or reports(shard):
                skips.skip(reason, shard, key, str(err))

        for raw in iter_tar_samples(shard, on_error, wanted, keep and keep(shard)):
            try:
                sample = decode_sample(raw, spec, rng)
            except SkipSample as skip:
                skips.skip(skip.reason, shard, raw["__key__"], skip.detail)
                continue
            skips.read(sample["audio"].shape[-1] / spec.sample_rate)
            yield sample


def collate(samples: list[dict]) -> dict:
    """Stack tensors of equal shape; keys, captions, notes and metadata stay per-item lists.

    ``start`` holds each item's crop start time in seconds, float64 (B,): exact enough to place
    the crop on MT3's 10 ms grid at any offset into a long file (float32 is not). Notes are in
    track time. Whole-file evaluation batches with unequal lengths are zero-padded and get
    ``lengths``. In a loader worker, audio and stems are written into shared memory here
    (:func:`data.shared_memory.to_shared`), cheaper than PyTorch's move when it sends them.
    """
    batch: dict = {"key": [s["key"] for s in samples], "meta": [s["meta"] for s in samples]}
    batch["start"] = torch.tensor([s["start"] for s in samples], dtype=torch.float64)
    lengths = [s["audio"].shape[-1] for s in samples]
    longest = max(lengths)
    for field in ("audio", "stems"):
        if field in samples[0]:
            tensors = [s[field] for s in samples]
            if len(set(lengths)) > 1:
                tensors = [torch.nn.functional.pad(t, (0, longest - t.shape[-1])) for t in tensors]
            batch[field] = tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)
            if get_worker_info() is not None:
                batch[field] = to_shared(batch[field])
    if len(set(lengths)) > 1:
        batch["lengths"] = torch.tensor(lengths)
    for field in ("caption", "notes"):
        if field in samples[0]:
            batch[field] = [s[field] for s in samples]
    return batch


def batch_part(part: tuple[int, int], batch: dict) -> dict:
    """Part ``index`` of ``count`` equal contiguous parts (``part = (index, count)``) of a
    collated batch whose size ``count`` divides: every tensor and list along its first axis."""
    index, count = part
    size = len(batch["key"]) // count
    window = slice(index * size, (index + 1) * size)
    return {name: value[window] for name, value in batch.items()}


def checked_batch_size(batch_size: int) -> int:
    """``batch_size`` when it is an integer >= 1 (with 0 no batch would ever fill: a hang)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


class TrainStream(IterableDataset):
    """Endless stream of random-crop training batches (see the module docstring).

    ``part = (index, count)`` keeps part ``index`` of ``count`` contiguous equal parts of each
    batch (:func:`batch_part`): with ``rank=0, world_size=1``, a batch size of ``count`` times
    the rank's and ``part = (rank, world size)``, every rank reads the one-process stream of
    global batches and trains on its slice (``loader.global_batches``).
    """

    def __init__(
        self,
        shards: list[str],
        spec: SampleSpec,
        batch_size: int,
        shuffle_buffer: int = 256,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        super().__init__()
        if not shards:
            raise ValueError("TrainStream needs at least one shard")
        self.shards, self.spec, self.batch_size = list(shards), spec, checked_batch_size(batch_size)
        if not 0 <= part[0] < part[1] or self.batch_size % part[1]:
            raise ValueError(f"part {part} must split batches of {batch_size} evenly")
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.rank, self.world_size, self.part = rank, world_size, part
        self.shared = SharedSkips()
        self.skips = SkipCounter(self.shared)

    def _samples(self, reader: int, readers: int) -> Iterator[dict]:
        """Decoded samples of this reader's passes: over its own shards, or, with more readers
        than shards, over every shard keeping its share of the samples; when such passes give
        nothing, over all samples of all shards (see the module docstring)."""
        owned = own_shards(self.shards, self.rank, self.world_size)
        shared = len(self.shards) < readers
        first, keep = (
            (self.shards, sample_share(self.shards, reader, readers)) if shared else (owned, None)
        )
        rng = random.Random(f"{self.seed}-{reader}")
        np_rng = np.random.default_rng([self.seed, reader])
        read = partial(
            decoded_samples,
            spec=self.spec,
            rng=np_rng,
            skips=self.skips,
            reports=set(owned).__contains__,
        )
        yield from read(shard_passes(first, rng, self.skips), keep=keep)
        # our fall-back: a reader left without usable data reads everything rather than stall
        # its rank (webdataset has no notion of a reader's share being empty)
        if shared or first != self.shards:
            log.warning(
                "no usable sample in this reader's share (%d shard(s), %s ...): it reads all "
                "samples of all %d train shards",
                len(first),
                first[0],
                len(self.shards),
            )
            yield from read(shard_passes(self.shards, rng, self.skips))

    def __iter__(self) -> Iterator[dict]:
        reader, readers = reader_index(self.rank, self.world_size)
        shuffle = None
        if self.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed}-{reader}-shuffle")
            initial = min(self.shuffle_buffer, 32)
            shuffle = wds.shuffle(self.shuffle_buffer, initial=initial, rng=rng)
        return iter(
            wds.DataPipeline(
                partial(self._samples, reader, readers),
                shuffle,
                wds.batched(self.batch_size, collation_fn=collate, partial=False),
                wds.map(partial(batch_part, self.part)) if self.part[1] > 1 else None,
            )
        )


class EvalStream(IterableDataset):
    """Finite, deterministic stream in which each sample appears once across ranks and workers."""

    def __init__(
        self,
        shards: list[str],
        spec: SampleSpec,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.shards, self.spec, self.batch_size = list(shards), spec, checked_batch_size(batch_size)
        self.rank, self.world_size = rank, world_size
        self.shared = SharedSkips()
        self.skips = SkipCounter(self.shared)

    def __iter__(self) -> Iterator[dict]:
        if not self.shards:
            return iter(())
        reader, readers = reader_index(self.rank, self.world_size)
        # every reader walks every shard in order and keeps its share (not split_by_node/worker):
        # exactly-once coverage for any number of readers, and every rank gets a loader
        decode = partial(
            decoded_samples,
            spec=self.spec,
            rng=np.random.default_rng(
                0
            ),  # only used by crop="random", which evaluation should not use
            skips=self.skips,
            keep=sample_share(self.shards, reader, readers),
            reports=set(own_shards(self.shards, self.rank, self.world_size)).__contains__,
        )
        return iter(
            wds.DataPipeline(
                wds.SimpleShardList(self.shards),
                decode,
                wds.batched(self.batch_size, collation_fn=collate, partial=True),
            )
        )


class EpochLoader:
    """Cuts an endless loader of a :class:`TrainStream` into epochs of exactly
    ``batches_per_epoch`` batches.

    The underlying iterator (and its worker processes) lives across epochs, so the stream
    continues where the previous epoch stopped. It ends only when no train shard of
    ``dataset_name`` gives a usable sample: a :class:`UserError` naming the dataset.
    """

    # not wds.WebLoader(...).with_epoch(n): it starts a new loader iterator every epoch (new
    # workers replaying the same seeds) and ends an exhausted stream silently instead of failing

    def __init__(self, loader: DataLoader, batches_per_epoch: int, dataset_name: str) -> None:
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.loader, self.batches_per_epoch = loader, batches_per_epoch
        self.dataset_name = dataset_name
        self._iterator: Iterator[dict] | None = None

    @property
    def stream(self) -> TrainStream:
        """The stream behind the loader (not ``dataset``: Lightning would take this for a
        DataLoader over an IterableDataset with a length, and warn)."""
        return self.loader.dataset

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        for _ in range(self.batches_per_epoch):
            batch = next(self._iterator, None)
            if batch is None:
                raise UserError(self._exhausted())
            yield batch

    def _exhausted(self) -> str:
        shards = self.stream.shards
        return (
            f"dataset {self.dataset_name} has no usable training sample in its {len(shards)} "
            f"train shard(s) ({shards[0]} ...; skipped: {skip_summary(self.stream.shared.totals())}): "
            "rebuild or replace them (python -m data.inspect names each problem)"
        )
