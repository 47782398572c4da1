"""Checking a run's ``last.ckpt`` before training resumes from it, so a damaged file or another
solver's checkpoint is one ``error:`` line instead of a traceback from inside ``trainer.fit``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning as L

from musicgen.checkpoint_io import checkpoint_solver, load_lightning_checkpoint
from musicgen.errors import UserError

START_OVER = "delete it or pass run.resume=false to start the run over"


def similar(names: Iterable[str], others: Iterable[str]) -> bool:
    """Whether at least half of all hyperparameter names are shared (one solver's names change
    little between versions; two solvers share few)."""
    names, others = set(names), set(others)
    return len(names & others) * 2 >= len(names | others)


def other_solver(state: dict, solver_name: str, solver: L.LightningModule) -> str | None:
    """The solver a checkpoint was trained with when that is not ``solver_name``, else None.

    Checkpoints that record their solver are compared by name; older ones by the names of their
    hyperparameters against ``solver``'s.
    """
    trained = checkpoint_solver(state)
    if trained is not None:
        return None if trained == solver_name else f"solver={trained}"
    hparams = state["hyper_parameters"]
    if isinstance(hparams, dict) and not similar(hparams, solver.hparams):
        return "another solver (its hyperparameters are not this solver's)"
    return None


def resume_checkpoint(
    path: Path | None, solver_name: str, solver: L.LightningModule
) -> Path | None:
    """``path`` (the run's ``last.ckpt``; None when there is none) once it is known to be a
    readable checkpoint of ``solver=solver_name``; raises :class:`UserError` otherwise."""
    if path is None:
        return None
    state = load_lightning_checkpoint(path, "the run's last checkpoint", START_OVER)
    trained = other_solver(state, solver_name, solver)
    if trained is not None:
        raise UserError(
            f"cannot resume solver={solver_name} from {path}: it was trained with {trained}; "
            f"{START_OVER}"
        )
    return path
