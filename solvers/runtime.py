"""Glue between Hydra configs and Lightning objects, shared by ``train.py`` and ``evaluate.py``."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterable
from datetime import timedelta
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

from data.datamodule import MusicDataModule, SolverData
from musicgen.errors import UserError

log = logging.getLogger(__name__)

# Overrides that do not change what a run computes, so they keep the run name (and its resume):
# where files go, how it is logged, and how long it trains.
HASH_EXCLUDED_PREFIXES = ("hydra.", "paths.", "logger", "run.", "trainer.max_steps", "trainer.max_epochs")
HASH_EXCLUDED_GROUPS = ("solver", "dataset", "logger")


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``."""
    return override.lstrip("+~").split("=", 1)[0]


def run_hash(overrides: Iterable[str]) -> str:
    """Short hash of the overrides that define a run (sorted, so their order does not matter)."""
    kept = sorted(
        o for o in overrides
        if not override_key(o).startswith(HASH_EXCLUDED_PREFIXES) and override_key(o) not in HASH_EXCLUDED_GROUPS
    )
    return hashlib.sha1("\n".join(kept).encode()).hexdigest()[:8]


def register_resolvers() -> None:
    """``${run_hash:...}`` and ``${env_missing:VAR}`` for the configs (idempotent)."""
    if not OmegaConf.has_resolver("run_hash"):
        OmegaConf.register_new_resolver("run_hash", lambda overrides: run_hash(list(overrides)))
    if not OmegaConf.has_resolver("env_missing"):
        OmegaConf.register_new_resolver("env_missing", lambda name: not os.environ.get(name))


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


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """Checkpointing (by steps, and last.ckpt), learning-rate logging and the rich progress bar."""
    top_k = cfg.checkpoint.save_top_k
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=cfg.checkpoint.every_n_train_steps,
            save_last=True,
            save_top_k=top_k,
            monitor=cfg.solver.get("monitor") if top_k > 0 else None,
            mode=cfg.solver.get("monitor_mode", "min"),
        ),
        LearningRateMonitor(logging_interval="step"),
        RichProgressBar(),
    ]
    if cfg.checkpoint.get("every_minutes"):
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="timed",
                train_time_interval=timedelta(minutes=cfg.checkpoint.every_minutes),
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    return callbacks


def build_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    return instantiate(cfg.trainer, logger=logger, callbacks=build_callbacks(cfg, run_dir), default_root_dir=str(run_dir))


def last_checkpoint(run_dir: Path) -> Path | None:
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.exists() else None


def run_entry(task: Callable[[DictConfig], object], cfg: DictConfig) -> None:
    """Run an entry point's task; a :class:`UserError` prints one ``error:`` line and exits with 2."""
    try:
        task(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
