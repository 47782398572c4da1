"""Output paths that stay inside their output folder, whatever names (sample keys) they are built from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from musicgen.errors import UserError


def inside(folder: str | Path, name: str) -> Path:
    """``folder / name`` resolved (symbolic links followed); raises :class:`UserError` when that
    is not a path below ``folder`` (``name`` absolute, with ``..``, or through a link out)."""
    root = Path(folder).resolve()
    if "\0" in name:
        raise UserError(f"refusing to write {name!r} in {folder}: the name holds a NUL character")
    path = (root / name).resolve()
    if path == root or not path.is_relative_to(root):
        raise UserError(
            f"refusing to write {name!r}: it resolves to {path}, outside the output folder {folder}"
        )
    return path


# Folders a checkpoint may name by reference (``${paths.weights_dir}/demucs``) instead of by a
# machine's absolute path; the environment and defaults mirror conf/paths/default.yaml.
FOLDER_ENV = {
    "weights_dir": "MUSICGEN_WEIGHTS",
    "runs_dir": "MUSICGEN_RUNS",
    "data_dir": "MUSICGEN_DATA",
}
FOLDER_DEFAULT = {"weights_dir": "weights", "runs_dir": "runs", "data_dir": "datasets"}
REFERENCE = re.compile(r"\$\{paths\.(\w+)\}")


def default_folders(**given: str | Path | None) -> dict[str, Path]:
    """``paths.*`` folders on this machine: ``given`` ones, else the environment, else defaults
    under ``MUSICGEN_ROOT`` (``.``)."""
    root = Path(os.environ.get("MUSICGEN_ROOT", "."))
    folders = {"root": root}
    for name, env in FOLDER_ENV.items():
        folders[name] = Path(given.get(name) or os.environ.get(env) or root / FOLDER_DEFAULT[name])
    return folders


def resolve_references(value: Any, folders: dict[str, Path]) -> Any:
    """``value`` (nested dicts/lists) with every ``${paths.NAME}`` replaced by ``folders[NAME]``."""
    if isinstance(value, dict):
        return {k: resolve_references(v, folders) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(resolve_references(v, folders) for v in value)
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: str(folders.get(m.group(1), m.group(0))), value)
    return value
