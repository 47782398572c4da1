"""The LightningDataModule that streams a prepared dataset's shards to a solver."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from data.decode import FIELDS, SampleSpec
from data.shardlist import split_shards
from data.skips import SKIP_REASONS, SharedSkips, skip_summary
from data.streams import EpochLoader, EvalStream, TrainStream
from data.worker_signals import ignore_stop_signals
from musicgen.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SolverData:
    """What a solver needs from the data: rate, channels, crop length and batch fields.

    Evaluation uses deterministic crops (``eval_crop``: ``start``, ``center`` or ``none`` for
    whole files) of ``eval_segment_seconds`` (defaults to ``segment_seconds``).
    """

    sample_rate: int
    channels: int
    segment_seconds: float
    fields: tuple[str, ...] = ("audio",)
    eval_crop: str = "start"
    eval_segment_seconds: float | None = None

    def train_spec(self) -> SampleSpec:
        return SampleSpec(
            self.sample_rate, self.channels, self.segment_seconds, tuple(self.fields), "random"
        )

    def eval_spec(self) -> SampleSpec:
        seconds = (
            None
            if self.eval_crop == "none"
            else (self.eval_segment_seconds or self.segment_seconds)
        )
        return SampleSpec(
            self.sample_rate, self.channels, seconds, tuple(self.fields), self.eval_crop
        )


def check_fields(
    dataset: str, provides: Iterable[str], needs: Iterable[str], solver: str = "the solver"
) -> None:
    """Fail early, in one sentence, when a dataset lacks a field the solver needs."""
    unknown = set(provides) - set(FIELDS)
    if unknown:
        raise UserError(
            f"dataset {dataset} declares unknown fields {sorted(unknown)}; valid: {list(FIELDS)}"
        )
    missing = [f for f in needs if f not in provides]
    if missing:
        raise UserError(
            f"{solver} needs {missing} but dataset={dataset} only provides {list(provides)}: "
            "pick a dataset that has them"
        )


class MusicDataModule(L.LightningDataModule):
    """Streams ``<root>/{train,valid,test}-*.tar`` as batch dicts (see ``data.streams``).

    ``auto_prepare`` (``{"builder": "synth", **kwargs}``) builds a missing dataset on first use.
    ``global_batches``: every rank reads the one-process stream of batches of ``batch_size x
    world size`` and trains on its contiguous slice, so the global batches (samples, crops,
    order) are those of one process with the whole batch, whatever the number of processes;
    each rank reads and decodes the whole global batch (world size times the I/O).
    """

    def __init__(
        self,
        name: str,
        root: str,
        provides: Sequence[str],
        requirements: SolverData,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        train_batches_per_epoch: int = 200,
        seed: int = 0,
        global_batches: bool = False,
        auto_prepare: dict | None = None,
        prepare_command: str | None = None,
        solver: str = "the solver",
    ) -> None:
        super().__init__()
        check_fields(name, provides, requirements.fields, solver)
        self.name, self.root, self.requirements = name, Path(root), requirements
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.train_batches_per_epoch, self.seed = train_batches_per_epoch, seed
        self.global_batches = global_batches
        self.auto_prepare = dict(auto_prepare) if auto_prepare else None
        self.prepare_command = prepare_command or f"python -m data.prepare {name} --out {root}"

    def is_prepared(self) -> bool:
        return (self.root / "index.json").exists()

    def check_source(self) -> None:
        """Fail fast when the dataset is neither prepared nor buildable automatically."""
        if not self.is_prepared() and not self.auto_prepare:
            raise UserError(
                f"dataset {self.name} is not prepared at {self.root}: run `{self.prepare_command}` "
                "or point dataset.root at a prepared copy"
            )

    def prepare_data(self) -> None:
        """Build the dataset when it is missing and the config says how; runs on one process per node."""
        if self.is_prepared():
            return
        self.check_source()
        options = dict(self.auto_prepare)
        builder = options.pop("builder")
        log.info("dataset %s not found at %s: building it now (%s)", self.name, self.root, options)
        importlib.import_module(f"data.prepare.{builder}").build(self.root, **options)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: TrainStream | EvalStream) -> DataLoader:
        # a plain DataLoader, not wds.WebLoader: the streams batch themselves, and WebLoader's
        # with_epoch would restart the iterator every epoch (see data.streams.EpochLoader)
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=2 if self.num_workers > 0 else None,
            worker_init_fn=ignore_stop_signals,
        )

    def train_dataloader(self) -> EpochLoader:
        rank, world = self._rank()
        step = self.trainer.global_step if self.trainer is not None else 0
        shards = split_shards(self.root, "train")
        # global batches: every rank is reader 0..workers-1 of the one-process stream
        streams = 1 if self.global_batches else world
        readers = streams * max(1, self.num_workers)
        if len(shards) < readers and rank == 0:
            log.info(
                "%d train shard(s) for %d readers (%d rank(s) x %d loader worker(s)): every reader "
                "reads all shards and keeps its own share of the samples (python -m data.prepare "
                "--min-shards %d gives each reader its own shards)",
                len(shards),
                readers,
                streams,
                max(1, self.num_workers),
                readers,
            )
        stream = TrainStream(
            shards,
            self.requirements.train_spec(),
            self.batch_size * world if self.global_batches else self.batch_size,
            self.shuffle_buffer,
            seed=self.seed + step,
            rank=0 if self.global_batches else rank,
            world_size=streams,
            part=(rank, world) if self.global_batches else (0, 1),
        )
        return EpochLoader(self._loader(stream), self.train_batches_per_epoch, self.name)

    def eval_dataloader(self, split: str) -> DataLoader:
        """A finite loader over ``split`` with the solver's evaluation crops."""
        rank, world = self._rank()
        stream = EvalStream(
            split_shards(self.root, split),
            self.requirements.eval_spec(),
            self.eval_batch_size,
            rank,
            world,
        )
        return self._loader(stream)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")


def stream_skips(loader: object) -> dict[str, int]:
    """The skip totals of the stream behind ``loader`` (an :class:`EpochLoader` or a DataLoader
    over a stream) so far, all its workers together; zeros for any other loader."""
    stream = loader.stream if isinstance(loader, EpochLoader) else getattr(loader, "dataset", None)
    shared = getattr(stream, "shared", None)
    if getattr(stream, "part", (0, 1))[0] > 0:  # a copy of rank 0's stream: its skips are rank 0's
        return dict.fromkeys(SKIP_REASONS, 0)
    return shared.totals() if isinstance(shared, SharedSkips) else dict.fromkeys(SKIP_REASONS, 0)


def reduced_skips(trainer: L.Trainer, module: L.LightningModule, loader: object) -> dict[str, int]:
    """:func:`stream_skips` summed over the ranks (a collective: every rank calls it).

    The epoch's ``sync_dist`` metrics are reduced first, on every rank: Lightning reduces them
    lazily, when first read, and the progress bar reads them at epoch end on rank 0 only, so
    rank 0 would be in that reduction while the others are in this one (a gloo size mismatch
    that aborted MT3's DDP runs, which log an epoch metric with ``sync_dist``)."""
    trainer.progress_bar_metrics  # noqa: B018 - computes (and caches) the synced epoch metrics
    counts = stream_skips(loader)
    values = torch.tensor(
        [counts[r] for r in SKIP_REASONS], dtype=torch.int64, device=module.device
    )
    values = trainer.strategy.reduce(values, reduce_op="sum")
    return dict(zip(SKIP_REASONS, (int(v) for v in values.tolist()), strict=True))


def _as_metrics(prefix: str, counts: dict[str, int]) -> dict[str, float]:
    """``{prefix}_<reason>`` for the non-zero reasons and ``prefix`` for their sum."""
    metrics = {f"{prefix}_{r}": float(n) for r, n in counts.items() if n}
    return {**metrics, prefix: float(sum(counts.values()))}


class SkipReport(L.Callback):
    """Skipped samples by reason, summed over loader workers and ranks.

    Training totals are logged as ``data/skipped_<reason>`` (non-zero reasons) and
    ``data/skipped`` at each epoch end, the skips of each validation pass as
    ``data/valid_skipped_<reason>`` and ``data/valid_skipped``; both go to the log (the end of
    ``train.log``) when training ends. The totals of the last test loop are kept in
    :attr:`test_skips` (evaluate.py's footnotes).
    """

    def __init__(self) -> None:
        self.train_skips: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
        self.valid_skips: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
        self.test_skips: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
        self._valid_before: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_skips = reduced_skips(trainer, pl_module, trainer.train_dataloader)
        pl_module.log_dict(_as_metrics("data/skipped", self.train_skips), rank_zero_only=True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the validation loader's stream is read again at each pass: its counts grow by a pass
        totals = reduced_skips(trainer, pl_module, trainer.val_dataloaders)
        self.valid_skips = {r: n - self._valid_before[r] for r, n in totals.items()}
        self._valid_before = totals
        if not trainer.sanity_checking:
            pl_module.log_dict(
                _as_metrics("data/valid_skipped", self.valid_skips), rank_zero_only=True
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            log.info(
                "skipped samples (all loader workers and ranks): training %s; last validation %s",
                skip_summary(self.train_skips),
                skip_summary(self.valid_skips),
            )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.test_skips = reduced_skips(trainer, pl_module, trainer.test_dataloaders)
