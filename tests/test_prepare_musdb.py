"""``python -m data.prepare musdb``: miniature MUSDB18 (.stem.mp4) and MUSDB18-HQ (wav) copies in
the real layouts become shards with the official splits and the four stems."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data.prepare.__main__ as dispatcher
from data.decode import SampleSpec, decode_sample
from data.prepare.musdb import VALIDATION_TRACKS, track_key
from data.shards import STEMS
from tests.fixtures.musdb import (
    KEYS,
    RATE,
    SECONDS,
    TRACKS,
    track_stems,
    write_musdb_hq,
    write_musdb_stems,
)
from tests.fixtures.prepared import read_samples

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


@pytest.fixture(autouse=True)
def only_musdb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher, "PREPARERS", {"musdb": "data.prepare.musdb"})


@pytest.fixture(scope="module")
def hq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_musdb_hq(tmp_path_factory.mktemp("musdb18hq"))


@pytest.fixture(scope="module")
def stems_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_musdb_stems(tmp_path_factory.mktemp("musdb18"))


def prepare(root: Path, out: Path, *extra: str) -> int:
    return dispatcher.main(["musdb", "--root", str(root), "--out", str(out), *extra])


def decoded(members: dict[str, bytes], ext: str) -> np.ndarray:
    data, rate = sf.read(io.BytesIO(members[ext]), dtype="float32", always_2d=True)
    assert rate == RATE
    return data


def snr_db(ref: np.ndarray, est: np.ndarray) -> float:
    return 10 * np.log10(np.square(ref).sum() / np.square(ref - est).sum())


def test_official_splits_and_keys() -> None:
    assert all(name in VALIDATION_TRACKS for name in TRACKS["valid"])
    assert not any(name in VALIDATION_TRACKS for name in TRACKS["train"] + TRACKS["test"])
    assert len(VALIDATION_TRACKS) == len(set(VALIDATION_TRACKS)) == 14
    for name, key in KEYS.items():
        assert track_key(name) == key


def test_hq_wav_folders_keep_every_sample(hq: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(hq, out) == 0
    for split, names in TRACKS.items():
        samples = read_samples(out, split)
        assert sorted(samples) == sorted(track_key(n) for n in names)
        for name in names:
            members = samples[track_key(name)]
            assert set(members) == {"flac", "json", *(f"{s}.flac" for s in STEMS)}
            meta = json.loads(members["json"])
            assert meta["track"] == name and meta["split"] == split
            assert meta["duration"] == pytest.approx(SECONDS)
            source = {
                k: sf.read(str(hq / ("test" if split == "test" else "train") / name / f"{k}.wav"))[
                    0
                ]
                for k in ("mixture", *STEMS)
            }
            np.testing.assert_array_equal(decoded(members, "flac"), source["mixture"])
            for stem in STEMS:  # 16-bit WAV -> 16-bit FLAC: lossless
                np.testing.assert_array_equal(decoded(members, f"{stem}.flac"), source[stem])
    index = json.loads((out / "index.json").read_text())
    assert index["musdb"]["format"] == "wav"


@pytest.mark.slow
def test_stem_mp4_streams_decode_in_order_and_aligned(stems_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(stems_copy, out) == 0
    for split, names in TRACKS.items():
        samples = read_samples(out, split)
        assert sorted(samples) == sorted(track_key(n) for n in names)
        for name in names:
            members, source = samples[track_key(name)], track_stems(name)
            assert len(decoded(members, "flac")) == int(SECONDS * RATE)  # AAC end padding cut
            assert snr_db(source["mixture"], decoded(members, "flac")) > 12
            for stem in STEMS:  # each stream is its own stem, not shifted in time
                scores = {
                    other: snr_db(source[other], decoded(members, f"{stem}.flac"))
                    for other in STEMS
                }
                assert max(scores, key=scores.get) == stem and scores[stem] > 10, scores
    index = json.loads((out / "index.json").read_text())
    assert index["musdb"]["format"] == "stems"


def test_shards_decode_as_a_separation_batch(hq: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(hq, out, "--max-tracks", "1") == 0
    raw = read_samples(out, "test")
    key, members = next(iter(raw.items()))
    spec = SampleSpec(RATE, 2, None, ("audio", "stems"), "none")
    sample = decode_sample({"__key__": key, **members}, spec, np.random.default_rng(0))
    assert sample["audio"].shape == (2, int(SECONDS * RATE))
    assert sample["stems"].shape == (len(STEMS), 2, int(SECONDS * RATE))
    np.testing.assert_allclose(sample["stems"].sum(0), sample["audio"], atol=3e-4)


def test_unreadable_track_is_skipped_and_bad_roots_are_one_error(
    hq: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = Path(shutil.copytree(hq, tmp_path / "hq"))
    (root / "test" / TRACKS["test"][0] / "vocals.wav").write_bytes(b"not audio")
    assert prepare(root, tmp_path / "out") == 0
    assert sorted(read_samples(tmp_path / "out", "test")) == [track_key(TRACKS["test"][1])]
    capsys.readouterr()
    assert prepare(tmp_path / "nowhere", tmp_path / "o2") == 2
    assert "has no ['train', 'test'] folders" in capsys.readouterr().err
    assert prepare(root, tmp_path / "o3", "--format", "stems") == 2
    assert "no track under" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    assert prepare(empty, tmp_path / "o4") == 2
    assert "neither .stem.mp4 files" in capsys.readouterr().err
