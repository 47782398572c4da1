"""Read TensorFlow checkpoints (the V2 "tensor bundle") without TensorFlow.

A checkpoint ``PREFIX`` is ``PREFIX.index``, an SSTable (LevelDB table format) mapping each
variable name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size; the empty key holds
the ``BundleHeaderProto``), and ``PREFIX.data-SSSSS-of-NNNNN`` files with the raw little-endian
tensor bytes. Only uncompressed tables are read (TensorFlow writes bundles uncompressed).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from musicgen.errors import UserError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
# tensorflow/core/framework/types.proto
DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _proto_fields(data: bytes) -> dict[int, list]:
    """A protobuf message as ``{field number: [values]}`` (varints as int, fixed as int,
    length-delimited as bytes)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", data, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = struct.unpack_from("<I", data, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _block(data: bytes, handle: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of the table block at ``handle`` (offset, size varints)."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if data[offset + size] != 0:
        raise ValueError("compressed table block (only uncompressed TensorFlow bundles are read)")
    block = data[offset : offset + size]
    restarts = struct.unpack_from("<I", block, size - 4)[0]
    end = size - 4 - 4 * restarts
    entries, key, pos = [], b"", 0
    while pos < end:
        shared, pos = _varint(block, pos)
        fresh, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + fresh]
        pos += fresh
        entries.append((key, block[pos : pos + length]))
        pos += length
    return entries


def _table(data: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) entries of an SSTable file's contents, in key order."""
    footer = data[-FOOTER_SIZE:]
    if len(data) < FOOTER_SIZE or struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise ValueError("not an SSTable (bad magic number)")
    _, pos = _varint(footer, 0)
    _, pos = _varint(footer, pos)
    index_start = pos
    _, pos = _varint(footer, pos)
    _, pos = _varint(footer, pos)
    entries = []
    for _, handle in _block(data, footer[index_start:pos]):
        entries += _block(data, handle)
    return entries


def checkpoint_prefix(path: str | Path) -> Path:
    """The checkpoint prefix for ``path``: a prefix, its ``.index`` file, or a folder with a
    ``checkpoint`` state file (``model_checkpoint_path: "..."``) or a single ``*.index``."""
    path = Path(path)
    if path.suffix == ".index":
        return path.with_suffix("")
    if not path.is_dir():
        return path
    state = path / "checkpoint"
    if state.is_file():
        found = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(), re.M)
        if found:
            return path / found.group(1)
    indexes = sorted(path.glob("*.index"))
    if len(indexes) != 1:
        raise UserError(
            f"{path} holds {len(indexes)} TensorFlow checkpoints (*.index files) and no "
            "'checkpoint' file naming one: pass the checkpoint prefix"
        )
    return indexes[0].with_suffix("")


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Every numeric variable of the TensorFlow checkpoint at ``path`` (see
    :func:`checkpoint_prefix`) as a numpy array; string variables are skipped."""
    prefix = checkpoint_prefix(path)
    index = prefix.with_name(prefix.name + ".index")
    if not index.is_file():
        raise UserError(f"no TensorFlow checkpoint at {prefix} ({index} is missing)")
    try:
        entries = _table(index.read_bytes())
        header = _proto_fields(entries[0][1]) if entries and entries[0][0] == b"" else {}
        shards = header.get(1, [1])[0]
        if header.get(2, [0])[0] != 0:
            raise ValueError("big-endian checkpoint")
        files: dict[int, bytes] = {}
        tensors = {}
        for key, value in entries:
            if key == b"":
                continue
            entry = _proto_fields(value)
            dtype = DTYPES.get(entry.get(1, [0])[0])
            if dtype is None:
                continue  # strings, resources, ...
            shape = [
                _proto_fields(dim).get(1, [0])[0]
                for dim in _proto_fields(entry.get(2, [b""])[0]).get(2, [])
            ]
            shard, offset, size = (entry.get(n, [0])[0] for n in (3, 4, 5))
            if shard not in files:
                data = prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{shards:05d}")
                files[shard] = data.read_bytes()
            raw = files[shard][offset : offset + size]
            array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
            tensors[key.decode()] = array.reshape(shape).copy()
    except (ValueError, IndexError, struct.error, OSError) as err:
        raise UserError(
            f"cannot read the TensorFlow checkpoint {prefix} ({err}): pass the unpacked files "
            "of a released archive (checkpoint, *.index, *.data-*)"
        ) from None
    return tensors
