"""``python -m data.prepare mtg``: a miniature MTG-Jamendo copy in the real layout becomes shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

import data.prepare.__main__ as dispatcher
from data.prepare.mtg import Track, caption_for, readable
from tests.fixtures.mtg import TRACKS, write_mtg_copy
from tests.fixtures.prepared import read_samples

BY_ID = {t.track_id: t for t in TRACKS}
SPLIT_TSV = Path("data/splits/split-0")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mtg_copy(tmp_path_factory.mktemp("mtg-src"))


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the miniature dataset, free to be damaged by the test."""
    return Path(shutil.copytree(pristine, tmp_path / "mtg"))


def prepare(root: Path, out: Path, *extra: str) -> int:
    return dispatcher.main(["mtg", "--root", str(root), "--out", str(out), *extra])


def test_writes_the_official_splits_with_counts(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    index = json.loads((out / "index.json").read_text())
    for split in ("train", "valid", "test"):
        expected = sorted(t.track_id for t in TRACKS if t.split == split)
        # at least --min-shards (8) shards when a split has as many tracks: one per track here
        shards = [f"{split}-{i:06d}.tar" for i in range(len(expected))]
        assert index["splits"][split]["shards"] == shards
        assert all((out / name).is_file() for name in shards)
        assert index["splits"][split]["sharding"]["min_shards"] == 8
        assert index["splits"][split]["num_samples"] == len(expected)
        assert sorted(read_samples(out, split)) == expected
    assert index["mtg"]["written"] == {"train": 4, "valid": 2, "test": 2}
    assert index["mtg"]["skipped"] == {}
    assert index["mtg"]["subset"] == "autotagging"


def test_samples_hold_the_original_mp3_and_metadata(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    for split in ("train", "valid", "test"):
        for key, members in read_samples(out, split).items():
            assert set(members) == {"mp3", "json"}
            track = BY_ID[key]
            source = root / "audio" / track.path
            assert members["mp3"] == source.read_bytes()
            meta = json.loads(members["json"])
            info = sf.info(str(source))
            assert meta["track_id"] == key
            assert meta["artist_id"] == f"artist_{track.artist:06d}"
            assert meta["album_id"] == f"album_{track.album:06d}"
            assert meta["path"] == track.path
            assert meta["duration"] == pytest.approx(info.duration, abs=1e-3)
            assert meta["sample_rate"] == info.samplerate == 44100
            assert meta["tags"] == list(track.tags)
            for field, prefix in (
                ("genres", "genre"),
                ("instruments", "instrument"),
                ("moods", "mood/theme"),
            ):
                assert meta[field] == [
                    t.split("---")[1] for t in track.tags if t.startswith(prefix + "---")
                ]
            assert meta["caption"] == caption_for(Track(key, "", "", "", 0.0, track.tags))


def test_duration_comes_from_the_file_not_the_stale_tsv(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    meta = json.loads(read_samples(out, "train")["track_0001100"]["json"])
    assert "201.3" in (root / SPLIT_TSV / "autotagging-train.tsv").read_text()
    assert meta["duration"] == pytest.approx(4.0, abs=0.05)


def test_captions_name_the_tags_and_are_deterministic() -> None:
    captions = []
    for mini in TRACKS:
        track = Track(mini.track_id, "a", "b", mini.path, mini.seconds, mini.tags)
        caption = caption_for(track)
        assert caption == caption_for(track)
        assert caption[0].isupper() and caption.endswith(".")
        for tag in mini.tags:
            assert readable(tag.split("---")[1]).lower() in caption.lower(), (tag, caption)
        captions.append(caption)
    assert "drum and bass" in captions[[t.number for t in TRACKS].index(2079)].lower()
    assert len({c.split()[0] for c in captions}) > 1  # wording varies between tracks
    assert caption_for(Track("track_0000001", "a", "b", "01/1.mp3", 30.0, ()))


def test_missing_and_unreadable_audio_are_skipped_and_counted(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (root / "audio/41/241.mp3").unlink()
    (root / "audio/46/3346.mp3").write_bytes(b"not an mp3 at all" * 10)
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["splits"]["train"]["num_samples"] == 3
    assert index["splits"]["valid"]["num_samples"] == 1
    assert index["mtg"]["skipped"] == {"missing_audio": 1, "unreadable_audio": 1}
    assert "track_0000241" not in read_samples(out, "train")
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert "241.mp3" in warnings and "missing_audio" in warnings
    assert "3346.mp3" in warnings and "unreadable_audio" in warnings


def test_missing_split_tsv_is_a_one_line_error(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (root / SPLIT_TSV / "autotagging-validation.tsv").unlink()
    assert prepare(root, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and "autotagging-validation.tsv" in err and "--root" in err
    assert not (tmp_path / "out").exists()


def test_missing_root_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert prepare(tmp_path / "nowhere", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err


def test_no_readable_audio_at_all_is_an_error(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare(root, tmp_path / "out", "--audio-dir", str(empty)) == 2
    assert "--audio-dir" in capsys.readouterr().err.strip().splitlines()[-1]


def test_max_tracks_limits_each_split(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out, "--max-tracks", "1") == 0
    index = json.loads((out / "index.json").read_text())
    assert {s: index["splits"][s]["num_samples"] for s in ("train", "valid", "test")} == {
        "train": 1,
        "valid": 1,
        "test": 1,
    }


def test_subset_genre_uses_the_genre_split_files(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out, "--subset", "genre") == 0
    index = json.loads((out / "index.json").read_text())
    assert index["mtg"]["written"] == {"train": 4, "valid": 1, "test": 1}
    for split in ("train", "valid", "test"):
        for members in read_samples(out, split).values():
            meta = json.loads(members["json"])
            assert meta["tags"] and all(tag.startswith("genre---") for tag in meta["tags"])
            assert meta["instruments"] == [] and meta["moods"] == []


def test_low_quality_names_are_found(tmp_path: Path) -> None:
    root = write_mtg_copy(tmp_path / "low", low_quality=True)
    for flags in ((), ("--low-quality",)):
        out = tmp_path / f"out{len(flags)}"
        assert prepare(root, out, *flags) == 0
        for key, members in read_samples(out, "test").items():
            meta = json.loads(members["json"])
            assert meta["audio_path"].endswith(".low.mp3")
            assert members["mp3"] == (root / "audio" / meta["audio_path"]).read_bytes()
            assert meta["path"] == BY_ID[key].path


def test_low_quality_flag_prefers_the_low_file(root: Path, tmp_path: Path) -> None:
    low = root / "audio/14/214.low.mp3"
    shutil.copy(root / "audio/00/1100.mp3", low)
    assert prepare(root, tmp_path / "high") == 0
    assert read_samples(tmp_path / "high", "train")["track_0000214"]["mp3"] != low.read_bytes()
    assert prepare(root, tmp_path / "low", "--low-quality") == 0
    assert read_samples(tmp_path / "low", "train")["track_0000214"]["mp3"] == low.read_bytes()


def test_same_input_gives_the_same_shard_bytes(root: Path, tmp_path: Path) -> None:
    assert prepare(root, tmp_path / "a") == 0
    assert prepare(root, tmp_path / "b") == 0
    for name in sorted(p.name for p in (tmp_path / "a").glob("*.tar")):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
