"""Every kind of bad sample is skipped, counted and named; good samples around it still load."""

from __future__ import annotations

import io
import itertools
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.decode import SampleSpec
from data.shards import ShardWriter
from data.skips import WARN_LIMIT, SkipCounter
from data.streams import EvalStream, TrainStream
from tests.fixtures.toy_shards import RATE, toy_sample

SPEC = SampleSpec(RATE, 1, 1.0, ("audio", "stems", "notes", "caption"), "start")


def wav_bytes(wav: np.ndarray, subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wav, RATE, format="WAV", subtype=subtype)
    return buffer.getvalue()


def corrupt(kind: str, members: dict[str, bytes]) -> dict[str, bytes]:
    members = dict(members)
    if kind == "missing_member":
        del members["bass.flac"]
    elif kind == "undecodable_audio":
        members["flac"] = b"fLaC" + bytes(200)
    elif kind == "non_finite":
        wav = np.full(3 * RATE, 0.1, dtype=np.float32)
        wav[100] = np.nan
        members = {k: v for k, v in members.items() if not k.endswith("flac")}
        members["wav"] = wav_bytes(wav)
    elif kind == "silent":
        members = {
            k: (wav_bytes(np.zeros(3 * RATE)) if k.endswith("flac") else v)
            for k, v in members.items()
        }
        members = {k.replace("flac", "wav"): v for k, v in members.items()}
    elif kind == "too_short":
        members = {k: v for k, v in members.items() if not k.endswith("flac")}
        members["wav"] = wav_bytes(np.full(RATE // 2, 0.1))
    elif kind == "malformed_json":
        members["json"] = b"{not json"
    elif kind == "malformed_midi":
        members["mid"] = b"MThd garbage"
    elif kind == "pickle_member":  # must be ignored, never unpickled
        members["pyd"] = b"\x80\x04cos\nsystem\n(S'touch /tmp/pwned'\ntR."
    return members


KINDS = [
    "missing_member",
    "undecodable_audio",
    "non_finite",
    "silent",
    "too_short",
    "malformed_json",
    "malformed_midi",
]


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bad")
    with ShardWriter(out, "valid", max_samples=100) as writer:
        for i, kind in enumerate(["good", *KINDS, "pickle_member", "good"]):
            members, seconds = toy_sample(i)
            writer.write(f"s{i:02d}-{kind.replace('_', '-')}", corrupt(kind, members), seconds)
    # a truncated copy of the same shard: everything up to the cut is still read
    data = (out / "valid-000000.tar").read_bytes()
    (out / "cut-000000.tar").write_bytes(data[: len(data) // 2 + 700])
    return out


def test_each_bad_kind_is_skipped_and_counted(
    bad_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stream = EvalStream([str(bad_dataset / "valid-000000.tar")], SPEC, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="data"):
        keys = [k for batch in stream for k in batch["key"]]
    assert keys == ["s00-good", "s08-pickle-member", "s09-good"]
    assert dict(stream.skips.skipped) == dict.fromkeys(KINDS, 1)
    for i, kind in enumerate(KINDS, start=1):
        assert any(
            f"s{i:02d}" in r.message and kind in r.message and "valid-000000.tar" in r.message
            for r in caplog.records
        )
    assert not Path("/tmp/pwned").exists()


def test_truncated_tar_keeps_what_came_before(bad_dataset: Path) -> None:
    stream = EvalStream([str(bad_dataset / "cut-000000.tar")], SPEC, batch_size=1)
    keys = [k for batch in stream for k in batch["key"]]
    assert keys[0] == "s00-good"
    assert stream.skips.skipped["truncated_tar"] == 1


def test_missing_shard_is_counted_not_fatal(bad_dataset: Path) -> None:
    shards = [str(bad_dataset / "nope-000000.tar"), str(bad_dataset / "valid-000000.tar")]
    stream = EvalStream(shards, SPEC, batch_size=8)
    assert sum(len(b["key"]) for b in stream) == 3
    assert stream.skips.skipped["unreadable_shard"] == 1


def test_caption_required_only_when_asked(bad_dataset: Path) -> None:
    no_caption = SampleSpec(RATE, 1, 1.0, ("audio",), "start")
    stream = EvalStream([str(bad_dataset / "valid-000000.tar")], no_caption, batch_size=16)
    keys = [k for batch in stream for k in batch["key"]]
    # a missing stem or a bad MIDI file no longer matters; JSON is always parsed
    assert "s01-missing-member" in keys and "s07-malformed-midi" in keys
    assert json.dumps(dict(stream.skips.skipped), sort_keys=True) == json.dumps(
        {"malformed_json": 1, "non_finite": 1, "silent": 1, "too_short": 1, "undecodable_audio": 1},
        sort_keys=True,
    )


def test_repeated_skips_are_counted_but_named_once(caplog: pytest.LogCaptureFixture) -> None:
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="data"):
        for _ in range(3):  # a training stream cropping the same silent piece again and again
            counter.skip("silent", "train-000000.tar", "quiet")
        for i in range(WARN_LIMIT + 5):
            counter.skip("too_short", "train-000000.tar", f"k{i}")
    messages = [r.getMessage() for r in caplog.records]
    assert counter.skipped == {"silent": 3, "too_short": WARN_LIMIT + 5}
    assert sum("key quiet (silent)" in m for m in messages) == 1
    assert sum("(too_short)" in m and "key" in m for m in messages) == WARN_LIMIT
    assert sum("no longer named" in m for m in messages) == 1


def test_a_file_that_is_not_a_tar_has_its_own_reason(bad_dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "text-000000.tar").write_text("this is a text file, not a tar\n" * 40)
    shards = [str(tmp_path / "text-000000.tar"), str(tmp_path), str(bad_dataset / "cut-000000.tar")]
    stream = EvalStream(shards, SPEC, batch_size=8)
    assert [k for batch in stream for k in batch["key"]][0] == "s00-good"
    assert stream.skips.skipped["not_a_tar"] == 1
    assert stream.skips.skipped["unreadable_shard"] == 1  # a folder
    assert stream.skips.skipped["truncated_tar"] == 1


def shards_with_every_problem(bad_dataset: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "text-000000.tar").write_text("not a tar\n" * 100)
    members, _ = toy_sample(0)
    with tarfile.open(tmp_path / "unsafe-000000.tar", "w") as tar:
        for name in ("../evil", "fine"):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    names = ["nope-000000.tar", "valid-000000.tar", "cut-000000.tar"]
    return [str(bad_dataset / n) for n in names] + [
        str(tmp_path / "text-000000.tar"),
        str(tmp_path / "unsafe-000000.tar"),
    ]


def test_readers_together_count_each_skip_once(bad_dataset: Path, tmp_path: Path) -> None:
    shards = shards_with_every_problem(bad_dataset, tmp_path)
    alone = EvalStream(shards, SPEC, batch_size=4)
    keys = [k for batch in alone for k in batch["key"]]
    shard_level = ("unreadable_shard", "not_a_tar", "truncated_tar", "unsafe_key")
    assert [alone.skips.skipped[reason] for reason in shard_level] == [1, 1, 1, 1]
    assert alone.skips.skipped["missing_member"] == 2  # in valid-000000.tar and before the cut
    total: Counter[str] = Counter()
    shared: list[str] = []
    for rank in range(3):
        reader = EvalStream(shards, SPEC, batch_size=4, rank=rank, world_size=3)
        shared += [k for batch in reader for k in batch["key"]]
        total += reader.skips.skipped
    assert total == alone.skips.skipped
    assert sorted(shared) == sorted(keys) and "fine" in keys


def test_training_readers_count_a_damaged_shard_once(bad_dataset: Path, tmp_path: Path) -> None:
    shards = [str(tmp_path / "text-000000.tar"), str(bad_dataset / "valid-000000.tar")]
    (tmp_path / "text-000000.tar").write_text("not a tar\n" * 100)
    total: Counter[str] = Counter()
    for rank in range(3):  # more readers than shards: every reader reads both, again and again
        stream = TrainStream(shards, SPEC, 2, shuffle_buffer=1, rank=rank, world_size=3)
        list(itertools.islice(iter(stream), 6))  # 12 crops of 3 good samples: four passes
        total["not_a_tar"] += stream.skips.skipped["not_a_tar"]
    assert total["not_a_tar"] == 1
