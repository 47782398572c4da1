"""Streaming a WebDataset tar shard into raw samples (bytes only; nothing is ever unpickled)."""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

RawSample = dict[str, bytes | str]


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/key.bass.flac`` -> (``dir/key``, ``bass.flac``): the key ends at the basename's first dot."""
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    key = posixpath.join(directory, stem) if directory else stem
    return key, ext.lower() if dot else ""


def iter_tar_samples(
    path: str,
    on_error: Callable[[str, str | None, Exception], None],
    wanted: Callable[[str], bool] | None = None,
) -> Iterator[RawSample]:
    """Yield ``{"__key__": key, "__shard__": path, ext: bytes, ...}`` for each sample of a tar shard.

    Members of one sample must be consecutive (as WebDataset writes them). Only members whose
    extension passes ``wanted`` are read (the others are skipped by seeking). A shard that cannot
    be opened or ends early (truncated download, disk error) calls ``on_error(reason, key, err)``
    with reason ``unreadable_shard`` or ``truncated_tar``; the samples read before the damage
    are still yielded, the partial one is dropped.
    """
    key: str | None = None
    sample: RawSample = {}
    try:
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed in the finally block
    except FileNotFoundError as err:
        on_error("unreadable_shard", None, err)
        return
    except (tarfile.TarError, OSError) as err:
        on_error("truncated_tar" if Path(path).exists() else "unreadable_shard", None, err)
        return
    try:
        while (member := tar.next()) is not None:
            if not member.isfile():
                continue
            member_key, ext = split_member_name(member.name)
            if member_key != key:
                if sample:
                    yield sample
                key, sample = member_key, {"__key__": member_key, "__shard__": path}
            if wanted is not None and not wanted(ext):
                continue
            fileobj = tar.extractfile(member)
            data = fileobj.read() if fileobj is not None else b""
            if len(data) != member.size:
                raise EOFError(f"member {member.name} is truncated")
            sample[ext] = data
        if sample:
            yield sample
    except (tarfile.TarError, EOFError, OSError) as err:
        on_error("truncated_tar", key, err)
    finally:
        tar.close()
