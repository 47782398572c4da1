"""``python -m data.prepare musiccaps``: a miniature MusicCaps copy in the real layout -> shards."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data.prepare.__main__ as dispatcher
from tests.fixtures.musiccaps import CLIPS, RATE, audio_path, write_csv, write_musiccaps_copy
from tests.fixtures.prepared import read_samples

BY_ID = {c.ytid: c for c in CLIPS}
PRESENT = [c.ytid for c in CLIPS if c.file is not None]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_musiccaps_copy(tmp_path_factory.mktemp("musiccaps-src"))


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "musiccaps"))


def prepare(root: Path, out: Path, *extra: str) -> int:
    return dispatcher.main(
        ["musiccaps", "--csv", str(root / "musiccaps-public.csv"), "--audio", str(root / "audio"),
         "--out", str(out), *extra]
    )  # fmt: skip


def test_all_present_clips_land_in_test_and_the_missing_one_is_counted(
    root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    index = json.loads((out / "index.json").read_text())
    assert set(index["splits"]) == {"test"}
    assert index["splits"]["test"]["num_samples"] == 3
    assert sorted(read_samples(out, "test")) == sorted(PRESENT)
    summary = index["musiccaps"]
    assert summary["written"] == {"test": 3}
    assert summary["skipped"] == {"missing_audio": 1}
    assert summary["skipped_clips"] == ["k_1xA9bBq2Y"]
    assert index["splits"]["test"]["total_seconds"] == pytest.approx(6.0, abs=0.1)


def test_metadata_comes_from_the_csv_row(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    for key, members in read_samples(out, "test").items():
        clip = BY_ID[key]
        meta = json.loads(members["json"])
        assert meta["caption"] == clip.caption
        assert meta["tags"] == meta["aspect_list"] == list(clip.aspects)
        assert meta["audioset_positive_labels"] == list(clip.labels)
        assert (meta["start_s"], meta["end_s"]) == (clip.start_s, clip.end_s)
        assert meta["author_id"] == str(clip.author_id)
        assert meta["is_balanced_subset"] is clip.balanced
        assert meta["is_audioset_eval"] is clip.audioset_eval
        assert meta["channels"] == clip.channels and meta["sample_rate"] == RATE
        assert meta["duration"] == pytest.approx(clip.end_s - clip.start_s, abs=0.06)
        assert meta["audio_path"] == audio_path(root, clip).relative_to(root / "audio").as_posix()


def test_wav_is_reencoded_losslessly_and_compressed_files_are_kept(
    root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    samples = read_samples(out, "test")
    wav_clip = samples["-0Gj8-vB1q4"]
    assert set(wav_clip) == {"flac", "json"}
    ours, _ = sf.read(io.BytesIO(wav_clip["flac"]), dtype="int16")
    source, _ = sf.read(audio_path(root, BY_ID["-0Gj8-vB1q4"]), dtype="int16")
    np.testing.assert_array_equal(ours, source)
    assert samples["0bRUkLsttto"]["flac"] == audio_path(root, BY_ID["0bRUkLsttto"]).read_bytes()
    assert samples["Z2sWWWIyn_k"]["mp3"] == audio_path(root, BY_ID["Z2sWWWIyn_k"]).read_bytes()


def test_eval_only_keeps_the_audioset_eval_rows(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out, "--eval-only") == 0
    expected = sorted(c.ytid for c in CLIPS if c.audioset_eval and c.file)
    assert sorted(read_samples(out, "test")) == expected == ["-0Gj8-vB1q4", "Z2sWWWIyn_k"]
    assert json.loads((out / "index.json").read_text())["musiccaps"]["skipped"] == {}


def test_audioset_layout_puts_the_other_rows_in_train(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out, "--layout", "audioset") == 0
    assert sorted(read_samples(out, "test")) == ["-0Gj8-vB1q4", "Z2sWWWIyn_k"]
    assert sorted(read_samples(out, "train")) == ["0bRUkLsttto"]


def test_whole_videos_are_cut_to_the_clip(tmp_path: Path) -> None:
    root = write_musiccaps_copy(tmp_path / "videos", whole_videos=True)
    out = tmp_path / "out"
    assert prepare(root, out, "--whole-videos") == 0
    for key, members in read_samples(out, "test").items():
        clip = BY_ID[key]
        assert "flac" in members
        ours, rate = sf.read(io.BytesIO(members["flac"]), dtype="float32", always_2d=True)
        video, _ = sf.read(audio_path(root, clip), dtype="float32", always_2d=True)
        segment = video[clip.start_s * RATE : clip.end_s * RATE]
        assert rate == RATE and ours.shape == segment.shape
        np.testing.assert_allclose(ours, segment, atol=1.5 / 32768)
        assert json.loads(members["json"])["duration"] == pytest.approx(clip.end_s - clip.start_s)


def test_long_files_without_whole_videos_are_kept_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_musiccaps_copy(tmp_path / "videos", whole_videos=True)
    assert prepare(root, tmp_path / "out") == 0
    assert "--whole-videos" in "\n".join(r.getMessage() for r in caplog.records)


def test_unreadable_audio_is_skipped_and_counted(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audio_path(root, BY_ID["Z2sWWWIyn_k"]).write_bytes(b"definitely not audio" * 20)
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    summary = json.loads((out / "index.json").read_text())["musiccaps"]
    assert summary["skipped"] == {"missing_audio": 1, "unreadable_audio": 1}
    assert sorted(read_samples(out, "test")) == ["-0Gj8-vB1q4", "0bRUkLsttto"]
    assert "Z2sWWWIyn_k" in "\n".join(r.getMessage() for r in caplog.records)


def test_max_clips_and_max_samples(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out, "--max-clips", "2", "--max-samples", "1") == 0
    index = json.loads((out / "index.json").read_text())
    assert index["splits"]["test"]["shards"] == ["test-000000.tar", "test-000001.tar"]
    assert sorted(read_samples(out, "test")) == ["-0Gj8-vB1q4", "0bRUkLsttto"]


def test_same_input_gives_the_same_shard_bytes(root: Path, tmp_path: Path) -> None:
    assert prepare(root, tmp_path / "a") == 0
    assert prepare(root, tmp_path / "b") == 0
    assert (tmp_path / "a/test-000000.tar").read_bytes() == (
        tmp_path / "b/test-000000.tar"
    ).read_bytes()


def test_csv_without_the_musiccaps_columns_is_a_one_line_error(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (root / "musiccaps-public.csv").write_text("ytid,caption\nabc,hello\n")
    assert prepare(root, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lacks the MusicCaps columns" in err and "start_s" in err


def test_malformed_aspect_list_names_the_line(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    csv_path = root / "musiccaps-public.csv"
    csv_path.write_text(csv_path.read_text().replace("['flute', 'calm']", "['flute', 'calm'"))
    assert prepare(root, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 4" in err and "aspect_list" in err


def test_missing_inputs_are_one_line_errors(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def run(csv_path: Path, audio: Path) -> int:
        return dispatcher.main(
            [
                "musiccaps",
                "--csv",
                str(csv_path),
                "--audio",
                str(audio),
                "--out",
                str(tmp_path / "out"),
            ]
        )

    assert run(tmp_path / "none.csv", root / "audio") == 2
    assert "--csv" in capsys.readouterr().err
    assert run(root / "musiccaps-public.csv", tmp_path / "nowhere") == 2
    assert "--audio" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(write_csv(empty / "musiccaps-public.csv"), empty) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no MusicCaps clip" in err and "<ytid>.wav" in err
