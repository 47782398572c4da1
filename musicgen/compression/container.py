"""The ``.ecdc`` file: codec codes of one audio file, with what is needed to decode them.

Layout (all integers big-endian)::

    bytes 0-3   magic b"MGEC"
    byte  4     format version (1)
    bytes 5-8   N, length of the header in bytes (uint32)
    N bytes     header: UTF-8 JSON object
    rest        payload: the codes, row-major over (codebook, frame), each written with
                ``bits`` bits, most significant bit first, zero-padded to a whole byte

Header keys: ``model`` (the ``CodecConfig`` dict), ``checkpoint`` (path of the weights used)
and ``checkpoint_sha256``, ``n_q``, ``frames``, ``bits``, ``bandwidth_kbps``, ``sample_rate``,
``channels``, ``length`` (samples at ``sample_rate``), ``scale`` (input RMS for codecs that
normalise their input, else null) and ``payload_crc32``.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from musicgen.errors import UserError

MAGIC = b"MGEC"
VERSION = 1


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers ``codes`` (any shape, row-major) with ``bits`` bits each."""
    values = codes.astype(">u4").reshape(-1)
    as_bits = np.unpackbits(values.view(np.uint8).reshape(-1, 4), axis=1)[:, 32 - bits :]
    return np.packbits(as_bits.reshape(-1)).tobytes()


def unpack_codes(payload: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` integers as a flat int64 array."""
    as_bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[: count * bits].reshape(
        count, bits
    )
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return as_bits.astype(np.int64) @ weights


def write_ecdc(path: str | Path, codes: torch.Tensor, header: dict) -> None:
    """Write ``codes`` ``(K, frames)`` and ``header`` (completed with shape and checksum) to ``path``."""
    n_q, frames = codes.shape
    payload = pack_codes(codes.cpu().numpy(), header["bits"])
    header = {**header, "n_q": n_q, "frames": frames, "payload_crc32": zlib.crc32(payload)}
    blob = json.dumps(header, sort_keys=True).encode()
    Path(path).write_bytes(MAGIC + bytes([VERSION]) + struct.pack(">I", len(blob)) + blob + payload)


def read_ecdc(path: str | Path) -> tuple[dict, torch.Tensor]:
    """``(header, codes (K, frames))`` of an ``.ecdc`` file; a UserError if it is not one or is damaged."""
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise UserError(
            f"{path} is not an .ecdc file (bad magic): pass a file written by `python -m musicgen.compress`"
        )
    if data[4] != VERSION:
        raise UserError(
            f"{path} is .ecdc version {data[4]}, this reader knows {VERSION}: decode it with a matching version"
        )
    (size,) = struct.unpack(">I", data[5:9])
    header = json.loads(data[9 : 9 + size].decode())
    payload = data[9 + size :]
    if zlib.crc32(payload) != header["payload_crc32"]:
        raise UserError(f"{path} is damaged (payload checksum mismatch): compress the audio again")
    codes = unpack_codes(payload, header["n_q"] * header["frames"], header["bits"])
    return header, torch.from_numpy(codes.reshape(header["n_q"], header["frames"]))
