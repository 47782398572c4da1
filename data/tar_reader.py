"""Streaming a WebDataset tar shard into raw samples (bytes only; nothing is ever unpickled)."""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable, Iterator

RawSample = dict[str, bytes | str]


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/key.bass.flac`` -> (``dir/key``, ``bass.flac``): the key ends at the basename's first dot."""
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    key = posixpath.join(directory, stem) if directory else stem
    return key, ext.lower() if dot else ""


def iter_tar_samples(
    path: str, on_error: Callable[[str, str | None, Exception], None]
) -> Iterator[RawSample]:
    """Yield ``{"__key__": key, "__shard__": path, ext: bytes, ...}`` for each sample of a tar shard.

    Members of one sample must be consecutive (as WebDataset writes them). A shard that cannot
    be opened or ends early (truncated download, disk error) calls ``on_error(reason, key, err)``
    with reason ``unreadable_shard`` or ``truncated_tar``; the samples read before the damage
    are still yielded, the partial one is dropped.
    """
    key: str | None = None
    sample: RawSample = {}
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed in the finally block
    except OSError as err:
        on_error("unreadable_shard", None, err)
        return
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = split_member_name(member.name)
                fileobj = tar.extractfile(member)
                data = fileobj.read() if fileobj is not None else b""
                if len(data) != member.size:
                    raise EOFError(f"member {member.name} is truncated")
                if member_key != key:
                    if sample:
                        yield sample
                    key, sample = member_key, {"__key__": member_key, "__shard__": path}
                sample[ext] = data
        if sample:
            yield sample
    except (tarfile.TarError, EOFError, OSError) as err:
        on_error("truncated_tar", key, err)
    finally:
        stream.close()
