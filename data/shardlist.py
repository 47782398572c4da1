"""Finding the shards of a dataset split: from ``index.json``, a directory, or a brace/glob pattern."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import braceexpand

from musicgen.errors import UserError


def expand_pattern(pattern: str) -> list[str]:
    """Expand ``dir/train-{000000..000009}.tar`` or ``dir/*.tar`` into existing files, in order."""
    paths: list[str] = []
    for expanded in braceexpand.braceexpand(pattern):
        if glob.has_magic(expanded):
            paths.extend(sorted(glob.glob(expanded)))
        elif Path(expanded).exists():
            paths.append(expanded)
        else:
            raise UserError(
                f"shard {expanded} does not exist: check the path or pattern {pattern!r}"
            )
    if not paths:
        raise UserError(
            f"no shard matches {pattern!r}: check the path or prepare the dataset first"
        )
    return paths


def split_shards(root: str | Path, split: str) -> list[str]:
    """Shards of ``split`` in the prepared dataset at ``root``, checked to exist."""
    root = Path(root)
    index = root / "index.json"
    if index.exists():
        try:
            entry = json.loads(index.read_text())["splits"][split]
        except (json.JSONDecodeError, KeyError) as err:
            raise UserError(
                f"{index} has no valid entry for split {split!r}: re-run data.prepare"
            ) from err
        shards = [str(root / name) for name in entry["shards"]]
        missing = [s for s in shards if not Path(s).exists()]
        if missing:
            raise UserError(
                f"{len(missing)} shard(s) listed in {index} are missing (first: {missing[0]}): re-run data.prepare"
            )
    else:
        shards = sorted(glob.glob(str(root / f"{split}-*.tar")))
    if not shards:
        raise UserError(
            f"no {split} shards in {root}: prepare the dataset (python -m data.prepare ...)"
        )
    return shards
