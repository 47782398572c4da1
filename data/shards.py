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

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "valid", "test")
STEMS = ("drums", "bass", "other", "vocals")
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


@dataclass
class ShardWriter:
    """Writes samples of one split into ``<out_dir>/<split>-NNNNNN.tar`` shards.

    A new shard starts after ``max_samples`` samples or ``max_bytes`` bytes. ``close()`` (or
    leaving the ``with`` block) records the split in ``index.json`` (shards, sample counts and
    total audio duration), keeping the entries of the other splits.
    """

    out_dir: Path
    split: str
    max_samples: int = 64
    max_bytes: int = 256 * 1024 * 1024
    extra_index: dict = field(default_factory=dict)
    _shards: list[_ShardInfo] = field(default_factory=list, init=False)
    _tar: tarfile.TarFile | None = field(default=None, init=False)
    _bytes: int = field(default=0, init=False)
    _keys: set = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_next(self) -> None:
        if self._tar is not None:
            self._tar.close()
        name = f"{self.split}-{len(self._shards):06d}.tar"
        self._tar = tarfile.open(self.out_dir / name, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._shards.append(_ShardInfo(name))
        self._bytes = 0

    def write(self, key: str, members: dict[str, bytes], seconds: float) -> None:
        """Add one sample: ``members`` maps an extension (``flac``, ``bass.flac``, ``json``) to bytes."""
        check_key(key)
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in split {self.split}")
        self._keys.add(key)
        size = sum(len(v) for v in members.values())
        current = self._shards[-1] if self._shards else None
        if (
            current is None
            or current.samples >= self.max_samples
            or (current.samples > 0 and self._bytes + size > self.max_bytes)
        ):
            self._open_next()
        assert self._tar is not None
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uname = info.gname = "musicgen"
            self._tar.addfile(info, io.BytesIO(data))
        self._bytes += size
        self._shards[-1].samples += 1
        self._shards[-1].seconds += seconds

    def close(self) -> dict:
        """Finish the last shard and write the index; returns the index contents."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        entry = {
            "shards": [s.name for s in self._shards],
            "samples_per_shard": [s.samples for s in self._shards],
            "num_samples": sum(s.samples for s in self._shards),
            "total_seconds": round(sum(s.seconds for s in self._shards), 3),
        }
        path = index_path(self.out_dir)
        index = json.loads(path.read_text()) if path.exists() else {}
        index.update(self.extra_index)
        index.setdefault("splits", {})[self.split] = entry
        atomic_write_text(path, json.dumps(index, indent=2, sort_keys=True) + "\n")
        return entry
