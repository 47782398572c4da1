"""Streaming a WebDataset tar shard into raw samples (bytes only; nothing is ever unpickled).

Sample keys are made safe here, where they come in: a key is the member path up to the
basename's first dot, with ``.`` and empty path components dropped and its folders flattened
by percent-encoding (``%`` -> ``%25``, then ``/`` -> ``%2F``), so ``album/x.flac`` gives the key
``album%2Fx`` and ``urllib.parse.unquote(key)`` gives ``album/x`` back. A key is a single file
name, so writers can put ``<key>.<ext>`` into their folder. A sample whose member path is
absolute, has a ``..`` component or holds a NUL is skipped and counted as ``unsafe_key``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator

from webdataset.tariterators import base_plus_ext

RawSample = dict[str, bytes | str]


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/key.bass.flac`` -> (``dir/key``, ``bass.flac``): the key ends at the basename's first
    dot, as webdataset's ``base_plus_ext`` splits it; a name without one is all key."""
    key, ext = base_plus_ext(name)
    return (name, "") if key is None else (key, ext.lower())


def safe_key(key: str) -> str:
    """``key`` (as :func:`split_member_name` gives it) as one file name (see the module docstring).

    Raises ValueError when it is absolute, has a ``..`` component, holds a NUL or is empty.
    """
    if "\0" in key:
        raise ValueError("the member name holds a NUL character")
    if key.startswith("/"):
        raise ValueError("the member name is an absolute path")
    parts = [part for part in key.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("the member name has a '..' component")
    if not parts:
        raise ValueError("the member name gives an empty key")
    return "%2F".join(part.replace("%", "%25") for part in parts)


def _new_sample(
    member_key: str, path: str, on_error: Callable[[str, str | None, Exception], None]
) -> RawSample:
    """The start of a raw sample, or ``{}`` (reported as ``unsafe_key``) when its key is unsafe."""
    try:
        return {"__key__": safe_key(member_key), "__shard__": path}
    except ValueError as err:
        on_error("unsafe_key", repr(member_key), err)
        return {}


def iter_tar_samples(
    path: str,
    on_error: Callable[[str, str | None, Exception], None],
    wanted: Callable[[str], bool] | None = None,
    keep: Callable[[int], bool] | None = None,
) -> Iterator[RawSample]:
    """Yield ``{"__key__": key, "__shard__": path, ext: bytes, ...}`` for each sample of a tar shard
    (``key`` made safe by :func:`safe_key`; a sample with an unsafe key calls
    ``on_error("unsafe_key", key, err)`` once and is dropped).

    Members of one sample must be consecutive (as WebDataset writes them). Only members whose
    extension passes ``wanted`` are read, and only samples whose position in the shard passes
    ``keep`` (0, 1, ...): the others are skipped by seeking past them, from their tar headers. A shard that cannot
    be opened (missing, a folder, no permission) calls ``on_error("unreadable_shard", None, err)``,
    a file that is not an uncompressed tar ``on_error("not_a_tar", None, err)``, and a tar that
    ends early (truncated download, disk error) ``on_error("truncated_tar", key, err)``; the
    samples read before the damage are still yielded, the partial one is dropped.
    """
    # our own reader, not wds.tar_file_iterator: that streams the tar (mode "r|*") and reads every
    # member's bytes, while readers sharing a shard skip the others' samples by header here; it
    # also leaves damage to one exception handler, where skips are counted by reason here
    key: str | None = None
    sample: RawSample = {}
    position = -1
    try:
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed in the finally block
    except tarfile.TarError as err:
        on_error("not_a_tar", None, err)
        return
    except OSError as err:
        on_error("unreadable_shard", None, err)
        return
    try:
        while (member := tar.next()) is not None:
            if not member.isfile():
                continue
            member_key, ext = split_member_name(member.name)
            if member_key != key:
                if sample:
                    yield sample
                key, position = member_key, position + 1
                kept = keep is None or keep(position)
                sample = _new_sample(member_key, path, on_error) if kept else {}
            if not sample:  # another reader's sample, or an unsafe key
                continue
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
