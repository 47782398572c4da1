"""The ``.ecdc`` file: codec codes of one audio file, with what is needed to decode them.

Layout (all integers big-endian)::

    bytes 0-3   magic b"MGEC"
    byte  4     format version (2)
    bytes 5-8   N, length of the header in bytes (uint32)
    N bytes     header: UTF-8 JSON object
    rest        payload: ``scales`` float32 segment scales, then the codes, row-major over
                (codebook, frame), each written with ``bits`` bits, most significant bit first,
                zero-padded to a whole byte

Header keys: ``codec`` (the codec's name: ``encodec_24khz``, ``encodec_48khz`` or ``custom``) and
``codec_sha256`` (:meth:`CompressionModel.digest`, 16 hex digits of the config and weights; no
file paths), ``n_q``, ``frames``, ``bits``, ``scales`` (number of segment scales: 0 unless the
codec normalises its input), ``bandwidth_kbps``, ``sample_rate``, ``channels``, ``length``
(samples at ``sample_rate``) and ``payload_crc32``.
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
VERSION = 2
PREFIX = 9  # magic, version, header length
FIX = "compress the audio again with `python -m musicgen.compress`"
HEADER_TYPES: dict[str, type | tuple[type, ...]] = {
    "codec": str,
    "codec_sha256": str,
    "n_q": int,
    "frames": int,
    "bits": int,
    "scales": int,
    "bandwidth_kbps": (int, float),
    "sample_rate": int,
    "channels": int,
    "length": int,
    "payload_crc32": int,
}
POSITIVE = ("n_q", "frames", "sample_rate", "channels", "length")


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers ``codes`` (any shape, row-major) with ``bits`` bits each."""
    values = codes.astype(">u4").reshape(-1)
    as_bits = np.unpackbits(values.view(np.uint8).reshape(-1, 4), axis=1)[:, 32 - bits :]
    return np.packbits(as_bits.reshape(-1)).tobytes()


def unpack_codes(payload: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` integers as a flat int64 array."""
    as_bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[: count * bits]
    as_bits = as_bits.reshape(count, bits)
    codes = np.zeros(count, dtype=np.int64)
    for column in range(bits):
        codes = (codes << 1) | as_bits[:, column]
    return codes


def payload_size(header: dict) -> int:
    """Bytes of the payload the header describes."""
    return 4 * header["scales"] + -(-header["n_q"] * header["frames"] * header["bits"] // 8)


def write_ecdc(
    path: str | Path, codes: torch.Tensor, scales: torch.Tensor | None, header: dict
) -> None:
    """Write ``codes`` ``(K, frames)``, ``scales`` and ``header`` (completed with shapes and checksum)."""
    n_q, frames = codes.shape
    scale_bytes = b"" if scales is None else scales.numpy().astype(">f4").tobytes()
    payload = scale_bytes + pack_codes(codes.cpu().numpy(), header["bits"])
    header = {
        **header,
        "n_q": n_q,
        "frames": frames,
        "scales": len(scale_bytes) // 4,
        "payload_crc32": zlib.crc32(payload),
    }
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    Path(path).write_bytes(MAGIC + bytes([VERSION]) + struct.pack(">I", len(blob)) + blob + payload)


def read_ecdc(path: str | Path) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
    """``(header, codes (K, frames), scales or None)`` of an ``.ecdc`` file.

    A missing file, another kind of file, or a damaged one (truncated, inconsistent header,
    checksum mismatch) raises a UserError.
    """
    data = _read_bytes(path)
    header = _parse_header(path, data)
    payload = data[PREFIX + struct.unpack(">I", data[5:PREFIX])[0] :]
    if len(payload) != payload_size(header):
        raise UserError(
            f"{path} is damaged: its payload is {len(payload)} bytes but its header (n_q, frames, "
            f"bits, scales) describes {payload_size(header)}; {FIX}"
        )
    if zlib.crc32(payload) != header["payload_crc32"]:
        raise UserError(f"{path} is damaged (payload checksum mismatch): {FIX}")
    count = 4 * header["scales"]
    scales = torch.from_numpy(np.frombuffer(payload[:count], dtype=">f4").astype(np.float32))
    if not (torch.isfinite(scales).all() and (scales > 0).all()):
        raise UserError(f"{path} is damaged (its segment scales are not positive numbers): {FIX}")
    codes = unpack_codes(payload[count:], header["n_q"] * header["frames"], header["bits"])
    codes = torch.from_numpy(codes.reshape(header["n_q"], header["frames"]))
    return header, codes, scales if header["scales"] else None


def _read_bytes(path: str | Path) -> bytes:
    """The file's bytes, checked for the magic, the version and a complete header."""
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise UserError(
            f"{path} {what}: pass an .ecdc file written by `python -m musicgen.compress`"
        )
    data = file.read_bytes()
    if not data:
        raise UserError(f"{path} is empty (0 bytes): {FIX}")
    if data[:4] != MAGIC[: len(data)]:
        raise UserError(
            f"{path} is not an .ecdc file (bad magic): pass a file written by `python -m musicgen.compress`"
        )
    if len(data) < PREFIX:
        raise UserError(f"{path} is truncated ({len(data)} bytes, shorter than any .ecdc): {FIX}")
    if data[4] != VERSION:
        raise UserError(
            f"{path} is .ecdc version {data[4]}, this reader knows {VERSION}: {FIX} (or decode it with a matching version)"
        )
    (size,) = struct.unpack(">I", data[5:PREFIX])
    if PREFIX + size > len(data):
        raise UserError(
            f"{path} is truncated or damaged: its header length field says {size} bytes but only "
            f"{len(data) - PREFIX} follow; {FIX}"
        )
    return data


def _parse_header(path: str | Path, data: bytes) -> dict:
    """The header JSON object, with every key present, of the right type and in range."""
    (size,) = struct.unpack(">I", data[5:PREFIX])
    try:
        header = json.loads(data[PREFIX : PREFIX + size].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is damaged (its header is not valid JSON): {FIX}") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is damaged (its header is not a JSON object): {FIX}")
    missing = sorted(set(HEADER_TYPES) - set(header))
    if missing:
        raise UserError(f"{path} is damaged (its header lacks {', '.join(missing)}): {FIX}")
    wrong = [
        key
        for key, kind in HEADER_TYPES.items()
        if not isinstance(header[key], kind) or isinstance(header[key], bool)
    ]
    wrong += [key for key in POSITIVE if key not in wrong and header[key] < 1]
    if "bits" not in wrong and not 1 <= header["bits"] <= 32:
        wrong.append("bits")
    if "scales" not in wrong and header["scales"] < 0:
        wrong.append("scales")
    if wrong:
        values = ", ".join(f"{key}={header[key]!r}" for key in wrong)
        raise UserError(f"{path} is damaged (invalid header values {values}): {FIX}")
    return header
