"""Glue between Hydra configs and Lightning objects, shared by ``train.py`` and ``evaluate.py``."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from omegaconf import DictConfig, OmegaConf

from data.datamodule import MusicDataModule, SkipReport, SolverData
from musicgen.errors import UserError
from solvers.cluster import cluster_value, rank_suffix, rank_zero_only
from solvers.preemption import AtomicCheckpointIO, LastCheckpoint, cluster_plugins
from solvers.rank_streams import RankStreams
from solvers.run_config import SolverConfigRecorder

log = logging.getLogger(__name__)

# Overrides that do not change what a run computes, so they keep the run name (and its resume):
# where files go, how it is logged, how long it trains, and the scheduler's bookkeeping (queue,
# time limit, memory, requeue budget). The process layout (cluster.nodes, cluster.tasks_per_node,
# the cluster choice itself) does change the global batch, so it stays in the hash.
HASH_EXCLUDED_PREFIXES = (
    "hydra.",
    "paths.",
    "logger",
    "run.",
    "trainer.max_steps",
    "trainer.max_epochs",
    "cluster.timeout_min",
    "cluster.partition",
    "cluster.account",
    "cluster.qos",
    "cluster.mem_gb",
    "cluster.cpus_per_task",
    "cluster.signal_delay_s",
    "cluster.max_num_timeout",
    "cluster.additional_parameters",
    "cluster.setup",
)
HASH_EXCLUDED_GROUPS = ("solver", "dataset", "logger")


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``."""
    return override.lstrip("+~").split("=", 1)[0]


def run_hash(overrides: Iterable[str]) -> str:
    """Short hash of the overrides that define a run (sorted, so their order does not matter)."""
    kept = sorted(
        o
        for o in overrides
        if not override_key(o).startswith(HASH_EXCLUDED_PREFIXES)
        and override_key(o) not in HASH_EXCLUDED_GROUPS
    )
    return hashlib.sha1("\n".join(kept).encode()).hexdigest()[:8]


def run_hash_resolver(*overrides: object) -> str:
    """``${run_hash:}``: the hash of this run's task overrides as typed, read from Hydra without
    resolving them, so an override that mentions ``${run.dir}`` (or ``${now:...}``) neither loops
    nor changes the name. ``${run_hash:LIST}`` hashes the (resolved) LIST given."""
    if overrides:
        (given,) = overrides
        return run_hash(list(given))
    from hydra.core.hydra_config import HydraConfig

    return run_hash(OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False))


def register_resolvers() -> None:
    """The configs' resolvers (idempotent): ``${run_hash:...}``, ``${env_missing:VAR}``,
    ``${cluster:KEY}`` (a cluster value, checked against the trainer; see solvers/cluster.py),
    ``${rank_suffix:}`` and ``${rank_zero_only:VALUE}`` (per-rank file names)."""
    resolvers = {
        "run_hash": run_hash_resolver,
        "env_missing": lambda name: not os.environ.get(name),
        "cluster": cluster_value,
        "rank_suffix": rank_suffix,
        "rank_zero_only": rank_zero_only,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def solver_data(cfg: DictConfig) -> SolverData:
    data = OmegaConf.to_container(cfg.solver.data, resolve=True)
    data["fields"] = tuple(data["fields"])
    return SolverData(**data)


def build_datamodule(cfg: DictConfig) -> MusicDataModule:
    """The DataModule for ``cfg.dataset``, shaped by what ``cfg.solver.data`` asks for."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    return MusicDataModule(
        name=dataset["name"],
        root=dataset["root"],
        provides=dataset["provides"],
        requirements=solver_data(cfg),
        auto_prepare=dataset.get("auto_prepare"),
        prepare_command=dataset.get("prepare_command"),
        solver=f"solver={cfg.solver.name}",
        seed=cfg.seed,
        **OmegaConf.to_container(cfg.loader, resolve=True),
    )


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """``last.ckpt`` (by steps, by wall-clock time, on preemption, at the end: one writer, see
    :class:`solvers.preemption.LastCheckpoint`), the best ``checkpoint.save_top_k`` checkpoints by
    the solver's monitor when asked, learning-rate logging, the progress bar, skip totals
    (:class:`data.datamodule.SkipReport`), per-rank random streams
    (:class:`solvers.rank_streams.RankStreams`), and ``cfg.callbacks``
    (a dict of ``_target_`` nodes, e.g. ``+callbacks.ema._target_=...``).
    """
    dirpath = checkpoint_dir(run_dir)
    callbacks: list[Callback] = [
        LastCheckpoint(
            dirpath / "last.ckpt",
            every_n_train_steps=cfg.checkpoint.every_n_train_steps,
            every_minutes=cfg.checkpoint.get("every_minutes"),
        ),
        LearningRateMonitor(logging_interval="step"),
        RichProgressBar(),
        SolverConfigRecorder(cfg),
        SkipReport(),
        RankStreams(cfg.seed),
    ]
    if cfg.checkpoint.save_top_k > 0:
        callbacks.append(
            ModelCheckpoint(
                dirpath=dirpath,
                filename="step{step:07d}",
                auto_insert_metric_name=False,
                save_top_k=cfg.checkpoint.save_top_k,
                monitor=cfg.solver.get("monitor"),
                mode=cfg.solver.get("monitor_mode", "min"),
            )
        )
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        if "_target_" not in node:
            raise UserError(
                f"callbacks.{name} has no _target_: give the callback class as callbacks.{name}._target_"
            )
        callbacks.append(instantiate(node, _convert_="all"))
    return callbacks


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    """The configured Trainer with atomic checkpoint writes and, under SLURM, Lightning's SLURM
    environment with its auto-requeue off (submitit owns requeue: see solvers/preemption.py)."""
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    plugins = [AtomicCheckpointIO(), *cluster_plugins()]
    extra = {}
    if cfg.trainer.get("strategy") == "ddp" and cfg.solver.get("ddp_find_unused_parameters"):
        # GAN solvers: each of their two optimiser steps leaves the other model without gradients.
        extra["strategy"] = "ddp_find_unused_parameters_true"
    return instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=build_callbacks(cfg, run_dir),
        plugins=plugins,
        default_root_dir=str(run_dir),
        **extra,
    )


def last_checkpoint(run_dir: Path) -> Path | None:
    path = checkpoint_dir(run_dir) / "last.ckpt"
    return path if path.exists() else None


def run_entry(task: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    """Run an entry point's task; a :class:`UserError` prints one ``error:`` line and exits with 2.

    Inside a submitit job the error is raised instead: submitit records it as the job's result and
    the submitting ``python train.py -m ...`` reports it (an exit would leave it waiting).
    """
    try:
        task(cfg)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("SUBMITIT_EXECUTOR"):
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)


def find_user_error(err: BaseException) -> UserError | None:
    """``err`` or the :class:`UserError` it wraps (Hydra's ``instantiate`` wraps what a solver's
    constructor raises in an ``InstantiationException``)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
