"""Reading ``train.py`` checkpoints safely: tensors and plain containers only (``weights_only``),
and every problem a user can cause is one :class:`UserError` sentence.

torch's own message for a file ``weights_only`` refuses suggests ``weights_only=False``, which
would run code from the file; we never pass it on.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from musicgen.errors import UserError

SOLVER_KEY = "solver_config"  # the training run's resolved ``solver`` config, saved by train.py


def load_checkpoint(
    path: str | Path, what: str = "checkpoint", fix: str | None = None
) -> dict[str, Any]:
    """The dict stored in ``path`` (loaded on the CPU with ``weights_only=True``).

    ``what`` names the file in messages (``"codec checkpoint"``, ...); ``fix``, when given,
    replaces the advice that ends each message. A missing path, a folder, an empty, truncated or
    damaged file, or one holding anything but tensors and plain containers raises
    :class:`UserError`.
    """
    file = Path(path)
    if not file.exists():
        raise UserError(
            f"{what} {file} does not exist: {fix or 'pass the path of a .ckpt written by train.py'}"
        )
    if not file.is_file():
        raise UserError(
            f"{what} {file} is a folder, not a file: {fix or 'pass the .ckpt file inside it'}"
        )
    if file.stat().st_size == 0:
        raise UserError(f"{what} {file} is empty (0 bytes): {fix or 'pass a complete checkpoint'}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # a class or function: code could run
            raise UserError(
                f"{what} {file} holds objects other than tensors and plain values, which are "
                f"never loaded (they could run code): {fix or 'pass a checkpoint written by train.py'}"
            ) from None
        raise UserError(
            f"{what} {file} is not a PyTorch checkpoint (damaged or another kind of file): "
            f"{fix or 'pass a .ckpt written by train.py'}"
        ) from None
    except Exception as error:  # torch's parsers fail on garbage with many exception types
        reason = first_line(error)  # some parsers fail with a bare number: no use to a reader
        reason = f" ({reason})" if any(c.isalpha() for c in reason) else ""
        raise UserError(
            f"{what} {file} cannot be read{reason}: it is truncated or not a PyTorch "
            f"checkpoint; {fix or 'pass a complete .ckpt written by train.py'}"
        ) from None
    if not isinstance(state, dict):
        raise UserError(
            f"{what} {file} is not a checkpoint (it holds a {type(state).__name__})"
            + (f": {fix}" if fix else "")
        )
    return state


def first_line(error: Exception) -> str:
    """The first line of ``error``'s message (at most 120 characters), or its type's name (also
    instead of torch's advice to load with ``weights_only=False``)."""
    text = str(error).strip()
    if not text or "weights_only" in text:
        return type(error).__name__
    return text.splitlines()[0][:120]


def load_lightning_checkpoint(
    path: str | Path, what: str = "checkpoint", fix: str | None = None
) -> dict[str, Any]:
    """A ``train.py`` checkpoint: :func:`load_checkpoint` plus the check that it has a state dict
    and hyperparameters."""
    state = load_checkpoint(path, what, fix)
    if not isinstance(state.get("state_dict"), dict) or "hyper_parameters" not in state:
        raise UserError(
            f"{what} {path} is not a checkpoint written by train.py (no state_dict/hyper_parameters)"
            + (f": {fix}" if fix else "")
        )
    return state


def checkpoint_solver(state: dict[str, Any]) -> str | None:
    """The ``solver=`` name a checkpoint was trained with, when it records it."""
    config = state.get(SOLVER_KEY)
    return config.get("name") if isinstance(config, dict) else None


def check_solver(state: dict[str, Any], path: str | Path, solvers: tuple[str, ...]) -> None:
    """Raise :class:`UserError` when the checkpoint records a ``solver=`` other than ``solvers``
    (checkpoints from before the solver was recorded pass)."""
    trained = checkpoint_solver(state)
    if trained is not None and trained not in solvers:
        wanted = " or ".join(f"solver={name}" for name in solvers)
        raise UserError(
            f"checkpoint {path} was trained with solver={trained}, not {wanted}: "
            f"pass a .ckpt of train.py {wanted}"
        )
