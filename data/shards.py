"""Writing WebDataset shards and their ``index.json``.

Layout of a prepared dataset directory::

    DIR/train-000000.tar  DIR/train-000001.tar ...
    DIR/valid-000000.tar ...
    DIR/test-000000.tar ...
    DIR/index.json      {"splits": {"train": {"shards": [...], "num_samples": ..., ...}, ...}}

A sample is a group of tar members sharing a key (no dots, no slashes): ``<key>.flac`` (the
mix; ``.wav``/``.ogg``/``.mp3`` are read too), ``<key>.<stem>.flac`` for each stem,
``<key>.mid`` (notes) and ``<key>.json`` (metadata, including ``caption``). Tar members are
written with fixed ownership and timestamps so the same content gives the same bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "valid", "test")
STEMS = ("drums", "bass", "other", "vocals")
DEFAULT_SHARD_MB = 100.0
DEFAULT_MIN_SHARDS = 8
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid sample key (letters, digits, ``_`` and ``-``)."""
    if not KEY_PATTERN.match(key):
        raise ValueError(
            f"invalid sample key {key!r}: use letters, digits, '_' and '-' only (no dots)"
        )
    return key


def index_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "index.json"


def read_index(out_dir: str | Path, split: str | None = None) -> dict:
    """The parsed ``index.json`` of a prepared dataset directory, or one split's entry of it."""
    path = index_path(out_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"no {path}: prepare the dataset first (python -m data.prepare ...)"
        )
    index = json.loads(path.read_text())
    if split is None:
        return index
    if split not in index.get("splits", {}):
        raise KeyError(f"{path} has no split {split!r} (it has {sorted(index.get('splits', {}))})")
    return index["splits"][split]


def add_sharding_arguments(
    parser: argparse.ArgumentParser, shard_mb: float = DEFAULT_SHARD_MB
) -> None:
    """``--shard-mb`` and ``--min-shards``, the options of :class:`ShardWriter` every preparer takes."""
    parser.add_argument(
        "--shard-mb",
        type=_positive_float,
        default=shard_mb,
        help="finish a shard at about this many MB (default %(default)s)",
    )
    parser.add_argument(
        "--min-shards",
        type=_positive_int,
        default=DEFAULT_MIN_SHARDS,
        help="at least this many shards per split when it has as many samples, so that ranks x "
        "loader workers each read their own (default %(default)s)",
    )


def sharding(args: argparse.Namespace) -> dict:
    """The :class:`ShardWriter` options given on a preparer's command line."""
    return {"max_bytes": round(args.shard_mb * 2**20), "min_shards": args.min_shards}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename, so it is never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class _ShardInfo:
    name: str
    samples: int = 0
    seconds: float = 0.0
    bytes: int = 0


@dataclass
class ShardWriter:
    """Writes samples of one split into ``<out_dir>/<split>-NNNNNN.tar`` shards.

    Samples go round-robin to ``min_shards`` open shards, so a split of at least that many
    samples has at least that many shards (every reader of a cluster gets its own); a shard is
    finished and replaced after ``max_samples`` samples or ``max_bytes`` bytes. ``close()`` (or
    leaving the ``with`` block) records the split in ``index.json`` (shards, sample counts, total
    audio duration and the sharding settings), keeping the entries of the other splits.
    """

    out_dir: Path
    split: str
    max_samples: int = 64
    max_bytes: int = 256 * 1024 * 1024
    min_shards: int = 1
    extra_index: dict = field(default_factory=dict)
    _shards: list[_ShardInfo] = field(default_factory=list, init=False)
    _open: list[tuple[tarfile.TarFile, _ShardInfo] | None] = field(default_factory=list, init=False)
    _keys: set = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        if self.min_shards < 1 or self.max_samples < 1 or self.max_bytes < 1:
            raise ValueError("min_shards, max_samples and max_bytes must be at least 1")
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._open = [None] * self.min_shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _shard_for(self, size: int) -> tuple[tarfile.TarFile, _ShardInfo]:
        """The open shard of the next sample's slot, replaced by a new one when it is full."""
        slot = len(self._keys) % self.min_shards
        current = self._open[slot]
        if current is not None:
            info = current[1]
            full = info.samples >= self.max_samples or (
                info.samples > 0 and info.bytes + size > self.max_bytes
            )
            if not full:
                return current
            current[0].close()
        info = _ShardInfo(f"{self.split}-{len(self._shards):06d}.tar")
        tar = tarfile.open(self.out_dir / info.name, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._shards.append(info)
        self._open[slot] = (tar, info)
        return tar, info

    def write(self, key: str, members: dict[str, bytes], seconds: float) -> None:
        """Add one sample: ``members`` maps an extension (``flac``, ``bass.flac``, ``json``) to bytes."""
        check_key(key)
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in split {self.split}")
        tar, info = self._shard_for(sum(len(v) for v in members.values()))
        self._keys.add(key)
        for ext in sorted(members):
            data = members[ext]
            member = tarfile.TarInfo(f"{key}.{ext}")
            member.size = len(data)
            member.mtime = 0
            member.mode = 0o644
            member.uname = member.gname = "musicgen"
            tar.addfile(member, io.BytesIO(data))
            info.bytes += len(data)
        info.samples += 1
        info.seconds += seconds

    def close(self) -> dict:
        """Finish the last shard and write the index; returns the index contents."""
        for current in self._open:
            if current is not None:
                current[0].close()
        self._open = [None] * self.min_shards
        entry = {
            "shards": [s.name for s in self._shards],
            "samples_per_shard": [s.samples for s in self._shards],
            "num_samples": sum(s.samples for s in self._shards),
            "total_seconds": round(sum(s.seconds for s in self._shards), 3),
            "sharding": {
                "min_shards": self.min_shards,
                "max_samples": self.max_samples,
                "max_mb": round(self.max_bytes / 2**20, 3),
            },
        }
        path = index_path(self.out_dir)
        index = json.loads(path.read_text()) if path.exists() else {}
        index.update(self.extra_index)
        index.setdefault("splits", {})[self.split] = entry
        atomic_write_text(path, json.dumps(index, indent=2, sort_keys=True) + "\n")
        return entry
