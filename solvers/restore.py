"""Rebuild the solver of a ``train.py`` checkpoint as it was trained, for ``evaluate.py``:
``python evaluate.py solver=compression checkpoint=PATH`` needs no ``experiment=`` and no file the
training read (the codec of a MusicGen run is in its checkpoint). The config comes from the
checkpoint (see :mod:`solvers.run_config`), command-line ``solver.*`` overrides go on top.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from musicgen.checkpoint_io import SOLVER_KEY, checkpoint_solver
from musicgen.errors import UserError
from solvers.runtime import override_key


def command_line_solver_overrides(overrides: list[str]) -> list[str]:
    """The dotted keys under ``solver.`` that the command line set (``solver.module.x=1``)."""
    keys = (override_key(o) for o in overrides if not o.startswith("~"))
    return [k for k in keys if k.startswith("solver.")]


def restore_solver_config(cfg: DictConfig, state: dict, path: Path, overrides: list[str]) -> None:
    """Replace ``cfg.solver`` with the checkpoint's own, then re-apply the command line's
    ``solver.*`` overrides on top. Checkpoints from before the config was saved keep
    ``cfg.solver`` and take the constructor arguments they saved (their hyperparameters)."""
    trained = checkpoint_solver(state)
    if trained is not None and trained != cfg.solver.name:
        raise UserError(
            f"checkpoint {path} was trained with solver={trained}, not solver={cfg.solver.name}: "
            f"pass solver={trained}"
        )
    keys = command_line_solver_overrides(overrides)
    given = {key: OmegaConf.select(cfg, key) for key in keys}
    module_cfg = cfg.solver.module
    if trained is not None:
        OmegaConf.set_struct(cfg, False)
        cfg.solver = OmegaConf.merge(cfg.solver, OmegaConf.create(state[SOLVER_KEY]))
        module_cfg = cfg.solver.module
    else:
        hparams = state.get("hyper_parameters") or {}
        for name in module_cfg:
            if name != "_target_" and name in hparams and f"solver.module.{name}" not in keys:
                module_cfg[name] = hparams[name]
    for key, value in given.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    _add_saved_arguments(module_cfg, state.get("hyper_parameters") or {}, keys)


def _add_saved_arguments(module_cfg: DictConfig, hparams: dict, keys: list[str]) -> None:
    """Constructor arguments a solver saved beyond its config (e.g. MusicGen's ``codec``: the
    codec's shape, so the LM checkpoint rebuilds the codec whose weights it holds)."""
    parameters = inspect.signature(get_class(module_cfg._target_)).parameters
    for name, value in hparams.items():
        if name in parameters and name not in module_cfg and f"solver.module.{name}" not in keys:
            OmegaConf.update(module_cfg, name, value, force_add=True)


def load_weights(solver: L.LightningModule, state: dict, path: Path, solver_name: str) -> None:
    """The checkpoint's weights into ``solver``; a key or shape that does not fit is one error."""
    weights = state["state_dict"]
    own = solver.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise UserError(
            f"checkpoint {path} does not hold a solver={solver_name} model of this configuration "
            f"({len(missing)} tensors missing, {len(unexpected)} unexpected, e.g. {example}): pass "
            "a checkpoint of this solver, or drop the override that changes the model"
        )
    for name, tensor in weights.items():
        if own[name].shape != tensor.shape:
            raise UserError(
                f"checkpoint {path} does not fit the model: {name} has shape "
                f"{tuple(tensor.shape)} in the checkpoint and {tuple(own[name].shape)} here; drop "
                "the solver.* override that changes the model's size"
            )
    solver.load_state_dict(weights)
