"""The solver config a training run stores in its checkpoints (``solver_config``), so that
``evaluate.py`` can rebuild the solver as it was trained (:mod:`solvers.restore`).

It is ``cfg.solver`` resolved, except values that refer to ``paths.*`` (weights, runs, data
folders): those stay interpolations, so they resolve on the machine that loads the checkpoint and
no training machine's absolute path is stored.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from musicgen.checkpoint_io import SOLVER_KEY

PATH_REFERENCE = "${paths."


def portable_solver_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.solver`` as a plain dict: resolved, but values naming ``${paths.*}`` kept as typed."""
    return _keep_path_references(
        OmegaConf.to_container(cfg.solver, resolve=False),
        OmegaConf.to_container(cfg.solver, resolve=True),
    )


def _keep_path_references(raw: Any, resolved: Any) -> Any:
    if isinstance(raw, dict) and isinstance(resolved, dict):
        return {k: _keep_path_references(raw.get(k), v) for k, v in resolved.items()}
    if isinstance(raw, list) and isinstance(resolved, list) and len(raw) == len(resolved):
        return [_keep_path_references(r, v) for r, v in zip(raw, resolved, strict=True)]
    if isinstance(raw, str) and PATH_REFERENCE in raw:
        return raw
    return resolved


class SolverConfigRecorder(Callback):
    """Writes the run's portable solver config into every checkpoint (``solver_config``)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = portable_solver_config(cfg)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint[SOLVER_KEY] = self.config
