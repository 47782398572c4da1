"""The solver config a training run stores in its checkpoints (``solver_config``), so that
``evaluate.py`` can rebuild the solver as it was trained (:mod:`solvers.restore`), and checkpoints
without the training machine's paths.

The config is ``cfg.solver`` resolved, except values that refer to ``paths.*`` (weights, runs,
data folders): those stay ``${paths.NAME}`` references, which resolve on the machine that loads
the checkpoint (Hydra in ``evaluate.py``, :func:`musicgen.paths.resolve_references` elsewhere);
and ``${dataset.name}`` (a solver's ``dataset_name``), which names the dataset being evaluated,
not the one trained on.
Any other existing path inside one of those folders (in the config or the solver's saved
hyperparameters) is stored the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from musicgen.checkpoint_io import SOLVER_KEY

PATH_REFERENCE = "${paths."
DATASET_NAME = "${dataset.name}"  # kept as typed: evaluate.py's dataset= fills it


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
    if isinstance(raw, str) and (PATH_REFERENCE in raw or raw == DATASET_NAME):
        return raw
    return resolved


def folder_references(cfg: DictConfig) -> dict[Path, str]:
    """The ``paths.*`` folders of this run, absolute, each with its reference."""
    names = ("weights_dir", "runs_dir", "data_dir")
    return {Path(cfg.paths[name]).resolve(): f"${{paths.{name}}}" for name in names}


def as_references(value: Any, folders: dict[Path, str]) -> Any:
    """``value`` (nested) with every existing path inside one of ``folders`` written as that
    folder's reference (the innermost folder wins): ``/data/w/demucs`` -> ``${paths.weights_dir}/demucs``."""
    if isinstance(value, dict):
        return {k: as_references(v, folders) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_references(v, folders) for v in value]
    if not isinstance(value, str) or "/" not in value or PATH_REFERENCE in value:
        return value
    path = Path(value)
    if not path.exists():
        return value
    path = path.resolve()
    inner = [folder for folder in folders if path.is_relative_to(folder)]
    if not inner:
        return value
    folder = max(inner, key=lambda f: len(f.parts))
    relative = path.relative_to(folder).as_posix()
    return folders[folder] + ("" if relative == "." else f"/{relative}")


class SolverConfigRecorder(Callback):
    """Writes the run's portable solver config into every checkpoint (``solver_config``) and
    writes the saved hyperparameters' paths inside ``paths.*`` folders as references."""

    def __init__(self, cfg: DictConfig) -> None:
        self.folders = folder_references(cfg)
        self.config = as_references(portable_solver_config(cfg), self.folders)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint[SOLVER_KEY] = self.config
        if "hyper_parameters" in checkpoint:
            hparams = dict(checkpoint["hyper_parameters"])
            checkpoint["hyper_parameters"] = as_references(hparams, self.folders)
