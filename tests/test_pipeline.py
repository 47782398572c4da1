"""The streaming pipeline: crops, decoding, distributed coverage, epoch lengths."""

from __future__ import annotations

import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.decode import SampleSpec, decode_sample
from data.shardlist import split_shards
from data.shards import ShardWriter, read_index
from data.streams import EpochLoader, EvalStream, TrainStream
from data.tar_reader import iter_tar_samples
from musicgen.errors import UserError
from musicgen.notes import END, IS_DRUM, PITCH, PROGRAM, START, TIED_END, TIED_START
from tests.fixtures.toy_shards import RATE

ALL_FIELDS = ("audio", "stems", "notes", "caption")


def raw_samples(root: Path, split: str) -> list[dict]:
    errors: list = []
    out = [
        r
        for s in split_shards(root, split)
        for r in iter_tar_samples(s, lambda *e: errors.append(e))
    ]
    assert not errors
    return out


def test_shard_names_and_index(toy_dataset: Path) -> None:
    index = json.loads((toy_dataset / "index.json").read_text())
    assert index["splits"]["train"]["shards"] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    assert index["splits"]["train"]["num_samples"] == 8
    assert index["splits"]["valid"]["samples_per_shard"] == [3, 2]
    keys = [r["__key__"] for r in raw_samples(toy_dataset, "valid")]
    assert keys == [f"toy-valid-{i:03d}" for i in range(5)]
    assert all("." not in k for k in keys)


def test_crop_keeps_audio_stems_and_notes_aligned(toy_dataset: Path) -> None:
    spec = SampleSpec(RATE, 1, 1.0, ALL_FIELDS, "random")
    rng = np.random.default_rng(0)
    for raw in raw_samples(toy_dataset, "train"):
        sample = decode_sample(raw, spec, rng)
        audio, stems, notes = sample["audio"], sample["stems"], sample["notes"].numpy().copy()
        assert audio.shape == (1, RATE) and stems.shape == (4, 1, RATE)
        torch.testing.assert_close(stems.sum(0), audio, atol=4e-4, rtol=0)
        # notes come in track time: those sounding in the crop, or up to 20 ms before it
        t0, pitched = sample["start"], notes[:, IS_DRUM] == 0
        assert (notes[:, START] < t0 + 1.0).all() and (notes[pitched, END] > t0 - 0.02).all()
        assert (notes[~pitched, START] >= t0 - 0.02).all()
        notes[:, [START, END]] = np.clip(notes[:, [START, END]] - t0, 0.0, 1.0)
        for stem_index, program in enumerate([0, 33, 48, 52]):
            if stem_index == 0:
                continue  # drums are onset events: a hit begun before the crop may ring into it
            stem_notes = notes[(notes[:, IS_DRUM] == 0) & (notes[:, PROGRAM] == program)]
            wav = stems[stem_index, 0].numpy()
            active = np.zeros(RATE, dtype=bool)
            for note in stem_notes:
                active[int(note[START] * RATE) : int(note[END] * RATE)] = True
            margin = np.convolve(active, np.ones(200), "same") > 0  # 12 ms around note edges
            if (~margin).any():
                assert np.abs(wav[~margin]).max() < 1e-3, "sound where no note is"
            for note in stem_notes:
                a, b = int(note[START] * RATE) + 100, int(note[END] * RATE) - 100
                if b - a > 400:
                    assert np.sqrt(np.mean(wav[a:b] ** 2)) > 0.03, "no sound where a note is"


def test_crop_marks_tied_notes() -> None:
    from musicgen.notes import crop_notes

    notes = np.array(
        [
            [0.0, 2.0, 60, 90, 0, 0, 0, 0],
            [0.5, 0.6, 36, 90, 0, 1, 0, 0],
            [1.2, 1.4, 62, 90, 0, 0, 0, 0],
        ]
    )
    out = crop_notes(notes, 1.0, 1.3)
    assert out[:, PITCH].tolist() == [60, 62]
    assert out[0, [START, END, TIED_START, TIED_END]].tolist() == [0.0, pytest.approx(0.3), 1, 1]
    assert out[1, [START, END, TIED_START, TIED_END]].tolist() == [
        pytest.approx(0.2),
        pytest.approx(0.3),
        0,
        1,
    ]


def test_resampling_and_channels(toy_dataset: Path) -> None:
    raw = raw_samples(toy_dataset, "test")[0]
    sample = decode_sample(
        raw, SampleSpec(32000, 2, 0.5, ("audio", "stems"), "start"), np.random.default_rng(0)
    )
    assert sample["audio"].shape == (2, 16000)
    assert sample["stems"].shape == (4, 2, 16000)
    whole = decode_sample(
        raw, SampleSpec(8000, 1, None, ("audio",), "none"), np.random.default_rng(0)
    )
    assert whole["audio"].shape == (1, 3 * 8000)


def eval_keys(root: Path, world: int, workers: int) -> list[list[str]]:
    spec = SampleSpec(RATE, 1, 1.0, ("audio",), "start")
    per_rank = []
    for rank in range(world):
        loader = DataLoader(
            EvalStream(split_shards(root, "valid"), spec, 2, rank, world),
            batch_size=None,
            num_workers=workers,
        )
        per_rank.append([k for batch in loader for k in batch["key"]])
    return per_rank


def test_eval_sees_every_sample_once_across_ranks_and_workers(toy_dataset: Path) -> None:
    per_rank = eval_keys(toy_dataset, world=2, workers=2)
    seen = sorted(itertools.chain(*per_rank))
    assert seen == [f"toy-valid-{i:03d}" for i in range(5)]
    assert per_rank == eval_keys(toy_dataset, world=2, workers=2), "order must be deterministic"


def test_training_epochs_have_equal_batch_counts_per_rank(toy_dataset: Path) -> None:
    spec = SampleSpec(RATE, 1, 0.5, ("audio", "caption"), "random")
    counts = []
    for rank in range(2):
        stream = TrainStream(
            split_shards(toy_dataset, "train"), spec, 3, 4, seed=1, rank=rank, world_size=2
        )
        loader = EpochLoader(
            DataLoader(stream, batch_size=None, num_workers=2),
            batches_per_epoch=7,
            dataset_name="toy",
        )
        epochs = [[b["audio"].shape for b in loader] for _ in range(2)]
        counts.append([len(e) for e in epochs])
        assert all(shape == (3, 1, RATE // 2) for e in epochs for shape in e)
    assert counts == [[7, 7], [7, 7]]


def test_training_readers_get_disjoint_shards(toy_dataset: Path) -> None:
    spec = SampleSpec(RATE, 1, 0.5, ("audio",), "random")
    shards = split_shards(toy_dataset, "train")
    seen = []
    for rank in range(3):
        stream = TrainStream(shards, spec, 1, 1, seed=0, rank=rank, world_size=3)
        seen.append({b["key"][0] for b in itertools.islice(iter(stream), 12)})
    assert all(not (a & b) for a, b in itertools.combinations(seen, 2))


def test_train_stream_fails_clearly_when_nothing_is_usable(tmp_path: Path) -> None:
    path = tmp_path / "train-000000.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("a.txt")
        tar.addfile(info)
    stream = TrainStream([str(path)], SampleSpec(RATE, 1, 0.5), 1)
    assert list(stream) == []
    loader = EpochLoader(DataLoader(stream, batch_size=None), 2, dataset_name="toy")
    with pytest.raises(UserError, match="dataset toy has no usable training sample"):
        next(iter(loader))


def test_shard_writer_spreads_samples_over_min_shards_and_caps_their_size(tmp_path: Path) -> None:
    """Round-robin over ``min_shards`` open shards; a full shard (by samples or bytes) is
    replaced by a new one; a sample bigger than the cap still gets a shard of its own."""
    with ShardWriter(tmp_path, "train", max_samples=3, max_bytes=250, min_shards=4) as writer:
        for i in range(20):
            writer.write(f"k{i:02d}", {"bin": bytes(100 if i != 5 else 400)}, 1.0)
    entry = read_index(tmp_path, "train")
    assert entry["num_samples"] == 20 and sum(entry["samples_per_shard"]) == 20
    assert len(entry["shards"]) >= 4 and max(entry["samples_per_shard"]) <= 3
    for name in entry["shards"]:
        with tarfile.open(tmp_path / name) as tar:
            members = tar.getmembers()
        assert members and (len(members) == 1 or sum(m.size for m in members) <= 250)
    first_four = [read_keys(tmp_path / name)[0] for name in entry["shards"][:4]]
    assert first_four == ["k00", "k01", "k02", "k03"]
    assert entry["sharding"] == {"min_shards": 4, "max_samples": 3, "max_mb": round(250 / 2**20, 3)}


def read_keys(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return [m.name.split(".")[0] for m in tar.getmembers()]


def first_pass_keys(stream: TrainStream) -> list[str]:
    """The keys one reader yields until its endless stream repeats a sample."""
    keys: list[str] = []
    for batch in stream:
        for key in batch["key"]:
            if key in keys:
                return keys
            keys.append(key)
    return keys


def test_more_readers_than_shards_split_the_samples(toy_dataset: Path) -> None:
    """3 train shards, 4 readers: every reader reads all shards and keeps its own samples, so
    the readers' samples are disjoint and together the whole split (before: each read all)."""
    shards = split_shards(toy_dataset, "train")
    spec = SampleSpec(RATE, 1, 1.0, ("audio",), "random")
    shares = [
        first_pass_keys(TrainStream(shards, spec, 1, shuffle_buffer=0, rank=r, world_size=4))
        for r in range(4)
    ]
    flat = [key for share in shares for key in share]
    assert sorted(flat) == [f"toy-train-{i:03d}" for i in range(8)] and all(shares)


def test_evaluation_skips_other_readers_samples_unread(
    toy_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of 3 readers reads the payload of its own samples only (the others are skipped by
    their tar headers), and together they see every sample once."""
    read: list[str] = []
    extract = tarfile.TarFile.extractfile

    def counting(self: tarfile.TarFile, member: tarfile.TarInfo):
        read.append(member.name.split(".")[0])
        return extract(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", counting)
    shards = split_shards(toy_dataset, "valid")
    spec = SampleSpec(RATE, 1, None, ("audio",), "none")
    seen = []
    for rank in range(3):
        read.clear()
        keys = [k for b in EvalStream(shards, spec, 1, rank=rank, world_size=3) for k in b["key"]]
        assert set(read) == set(keys)
        seen += keys
    assert sorted(seen) == [f"toy-valid-{i:03d}" for i in range(5)]
