"""Output paths that stay inside their output folder, whatever names (sample keys) they are built from."""

from __future__ import annotations

from pathlib import Path

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
