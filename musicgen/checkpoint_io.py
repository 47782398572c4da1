"""Reading ``train.py`` checkpoints safely: tensors and plain containers only (``weights_only``),
and every problem a user can cause is one :class:`UserError` sentence.

torch's own message for a file ``weights_only`` refuses suggests ``weights_only=False``, which
would run code from the file; we never pass it on.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from musicgen.errors import UserError

SOLVER_KEY = "solver_config"  # the training run's resolved ``solver`` config, saved by train.py


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The dict stored in ``path`` (loaded on the CPU with ``weights_only=True``).

    ``what`` names the file in messages (``"codec checkpoint"``, ...). A missing path, a folder,
    an empty, truncated or damaged file, or one holding anything but tensors and plain
    containers raises :class:`UserError`.
    """
    file = Path(path)
    if not file.exists():
        raise UserError(f"{what} {file} does not exist: pass the path of a .ckpt written by train.py")
    if not file.is_file():
        raise UserError(f"{what} {file} is a folder, not a file: pass the .ckpt file inside it")
    if file.stat().st_size == 0:
        raise UserError(f"{what} {file} is empty (0 bytes): pass a complete checkpoint")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise UserError(
                f"{what} {file} holds objects other than tensors and plain values, which are "
                "never loaded (they could run code): pass a checkpoint written by train.py"
            ) from None
        raise UserError(
            f"{what} {file} is not a PyTorch checkpoint (damaged or another kind of file): "
            "pass a .ckpt written by train.py"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{what} {file} cannot be read ({reason[:120]}): it is truncated or not a PyTorch "
            "checkpoint; pass a complete .ckpt written by train.py"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{what} {file} is not a checkpoint (it holds a {type(state).__name__})")
    return state


def load_lightning_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """A ``train.py`` checkpoint: :func:`load_checkpoint` plus the check that it has a state dict
    and hyperparameters."""
    state = load_checkpoint(path, what)
    if not isinstance(state.get("state_dict"), dict) or "hyper_parameters" not in state:
        raise UserError(
            f"{what} {path} is not a checkpoint written by train.py (no state_dict/hyper_parameters)"
        )
    return state


def checkpoint_solver(state: dict[str, Any]) -> str | None:
    """The ``solver=`` name a checkpoint was trained with, when it records it."""
    config = state.get(SOLVER_KEY)
    return config.get("name") if isinstance(config, dict) else None
