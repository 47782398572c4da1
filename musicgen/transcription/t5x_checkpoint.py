"""Read the parameters of a t5x checkpoint directory, as released for MT3 (``mt3``, ``ismir2021``).

The layout t5x's ``checkpoints.py`` writes:

* a ``checkpoint`` file: the state tree serialised with msgpack as flax does it,
  ``{"version": v, "optimizer": {"target": params, "state": ...}}`` (version 0: the optimizer
  tree at the top). Parameters are nested dicts below ``target`` (``encoder`` / ``layers_0`` /
  ``attention`` / ``query`` / ``kernel``).
* each leaf is either the array itself, as a msgpack extension (type 1: an array, 3: a numpy
  scalar; the payload is a msgpack ``(shape, dtype name, C-order bytes)``), or the tensorstore
  spec of an array stored beside the file: ``{"driver": "zarr", "kvstore": {"driver": "file",
  "path": "target.encoder.layers_0.attention.query.kernel"}, ...}`` (older specs hold ``path``
  at the top; checkpoints written to GCS name a ``gcs`` kvstore). The path is relative to the
  checkpoint directory.
* such an array is a zarr v2 directory: a ``.zarray`` JSON (``shape``, ``chunks``, ``dtype``,
  ``compressor`` gzip or zlib or none, ``order``, ``fill_value``, ``dimension_separator``)
  and one file per chunk, named by its chunk indices joined by the separator (``0.1``; ``0``
  for a scalar). Edge chunks are stored whole; a missing chunk holds the fill value.

Only ``target`` (the model's parameters) is read; the optimizer state beside it is skipped.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from musicgen.checkpoint_io import first_line
from musicgen.errors import UserError

CHECKPOINT_FILE = "checkpoint"
_ARRAY_EXT, _SCALAR_EXT = 1, 3
_FIX = (
    "pass the directory of a t5x checkpoint (its 'checkpoint' file with the 'target.*' array "
    "folders beside it), e.g. MT3's released checkpoints/mt3 or checkpoints/ismir2021"
)


def _dtype(name: str) -> np.dtype:
    """A numpy dtype of a flax or zarr dtype name; ``bfloat16`` is read as its raw 16 bits."""
    return np.dtype(np.uint16) if name == "bfloat16" else np.dtype(name)


def _bfloat16_as_float32(array: np.ndarray, dtype_name: str) -> np.ndarray:
    """Raw bfloat16 bits as float32 (the upper half of its bits); other arrays unchanged."""
    if dtype_name == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _unpack_extension(code: int, data: bytes) -> np.ndarray:
    """flax's msgpack extension types: an array (1) or a numpy scalar (3)."""
    if code not in (_ARRAY_EXT, _SCALAR_EXT):
        raise ValueError(f"unknown msgpack extension type {code}")
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    name = dtype_name.decode()
    array = np.frombuffer(buffer, dtype=_dtype(name)).reshape(shape).copy()
    return _bfloat16_as_float32(array, name)


def read_zarr(directory: Path) -> np.ndarray:
    """A zarr v2 array directory (see the module docstring) as a numpy array (bfloat16 as
    float32)."""
    meta = json.loads((directory / ".zarray").read_text())
    if meta.get("zarr_format", 2) != 2:
        raise ValueError(f"zarr format {meta['zarr_format']} (only 2 is read)")
    if meta.get("filters"):
        raise ValueError(f"zarr filters {meta['filters']} (none are read)")
    compressor = (meta.get("compressor") or {}).get("id")
    if compressor not in (None, "gzip", "zlib"):
        raise ValueError(f"zarr compressor {compressor!r} (gzip, zlib or none are read)")
    shape, chunks = list(meta["shape"]), list(meta["chunks"])
    dtype, order = _dtype(meta["dtype"]), meta.get("order", "C")
    separator = meta.get("dimension_separator", ".")
    grid = [-(-size // chunk) for size, chunk in zip(shape, chunks, strict=True)]
    fill = meta.get("fill_value")
    out = np.full([g * c for g, c in zip(grid, chunks, strict=True)], fill or 0, dtype=dtype)
    for index in itertools.product(*(range(g) for g in grid)):
        path = directory / (separator.join(map(str, index)) if index else "0")
        if not path.is_file():
            continue
        raw = path.read_bytes()
        if compressor is not None:
            raw = zlib.decompress(raw, wbits=47)  # 47: gzip or zlib header, detected
        block = np.frombuffer(raw, dtype=dtype).reshape(chunks, order=order)
        out[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks, strict=True))] = block
    array = np.ascontiguousarray(out[tuple(slice(0, size) for size in shape)])
    return _bfloat16_as_float32(array, meta["dtype"])


def _spec_path(spec: Mapping[str, Any]) -> str:
    """The array's path (relative to the checkpoint directory) in a tensorstore spec; its
    kvstore is a dict or a URL (``file:///...``)."""
    kvstore = spec.get("kvstore") or {}
    if isinstance(kvstore, str):
        kvstore = {"path": kvstore.split("://", 1)[-1]}
    path = kvstore.get("path") or spec.get("path")
    if not path:
        raise ValueError(f"tensorstore spec without a path: {spec}")
    return str(path).strip("/")


def _is_spec(node: Any) -> bool:
    return isinstance(node, Mapping) and node.get("driver") == "zarr"


def _flatten(tree: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{"a/b/c": leaf}`` of a nested dict; tensorstore specs are leaves."""
    flat: dict[str, Any] = {}
    for key, node in tree.items():
        name = f"{prefix}/{key}"
        if isinstance(node, Mapping) and not _is_spec(node):
            flat.update(_flatten(node, name))
        else:
            flat[name] = node
    return flat


def _leaf_array(name: str, leaf: Any, directory: Path) -> np.ndarray:
    """The array of a leaf: itself, or the zarr array its tensorstore spec names."""
    if isinstance(leaf, np.ndarray):
        return leaf
    if not _is_spec(leaf):
        raise ValueError(f"{name} is neither an array nor a tensorstore spec")
    path = directory / _spec_path(leaf)
    if not path.is_dir():  # a path written absolute elsewhere: its folder beside the file
        path = directory / path.name
    try:
        return read_zarr(path)
    except (ValueError, KeyError, TypeError, OSError, zlib.error) as err:
        raise ValueError(f"array {name}: {first_line(err)}") from None


def checkpoint_file(path: str | Path) -> Path:
    """The ``checkpoint`` msgpack file of a t5x checkpoint directory (or the file itself)."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no t5x checkpoint file {file}: {_FIX}")
    return file


def read_t5x_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The model parameters of a t5x checkpoint, flattened: ``{"target/encoder/...": array}``
    (bfloat16 as float32). Anything unreadable is a :class:`UserError`."""
    file = checkpoint_file(path)
    try:
        tree = msgpack.unpackb(
            file.read_bytes(), ext_hook=_unpack_extension, raw=False, strict_map_key=False
        )
        if not isinstance(tree, Mapping):
            raise ValueError("the msgpack content is not a dict")
        state = tree["optimizer"] if tree.get("version", 0) else tree
        params = {
            name: _leaf_array(name, leaf, file.parent)
            for name, leaf in _flatten(state["target"], "target").items()
        }
    except (ValueError, KeyError, TypeError, OSError, zlib.error, msgpack.UnpackException) as err:
        raise UserError(
            f"cannot read the t5x checkpoint {file} ({first_line(err)}): {_FIX}"
        ) from None
    return params
