"""``python -m data.prepare maestro``: a miniature MAESTRO v3 copy in the real layout becomes shards."""

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
from data.prepare.maestro import sample_key
from musicgen.notes import END, PITCH, START, notes_from_midi_bytes
from tests.fixtures.maestro import PERFORMANCES, RATE, SUSTAINED, write_maestro_copy
from tests.fixtures.prepared import read_samples


@pytest.fixture(autouse=True)
def only_maestro(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher, "PREPARERS", {"maestro": "data.prepare.maestro"})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_maestro_copy(tmp_path_factory.mktemp("maestro-src"))


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "maestro"))


def prepare(root: Path, out: Path, *extra: str) -> int:
    return dispatcher.main(["maestro", "--root", str(root), "--out", str(out), *extra])


def test_official_splits_keys_and_metadata(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["maestro"]["written"] == {"train": 2, "valid": 1, "test": 1}
    for split, source in (("train", "train"), ("valid", "validation"), ("test", "test")):
        expected = {sample_key(p.midi_filename): p for p in PERFORMANCES if p.split == source}
        samples = read_samples(out, split)
        assert set(samples) == set(expected)
        for key, members in samples.items():
            assert set(members) == {"flac", "mid", "json"}
            meta = json.loads(members["json"])
            perf = expected[key]
            assert meta["canonical_composer"] == perf.composer and meta["split"] == source
            assert perf.title in meta["caption"] and perf.composer in meta["caption"]
            assert meta["sample_rate"] == RATE and meta["channels"] == 2
            assert meta["duration"] == pytest.approx(perf.seconds, abs=1e-3)


def test_audio_is_lossless_flac_of_the_wav(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    perf = PERFORMANCES[0]
    flac, rate = sf.read(
        io.BytesIO(read_samples(out, "train")[sample_key(perf.midi_filename)]["flac"])
    )
    wav, _ = sf.read(root / perf.audio_filename)
    assert rate == RATE and flac.shape == wav.shape
    np.testing.assert_allclose(flac, wav, atol=1e-4)


def test_notes_have_the_sustain_pedal_applied(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    notes = notes_from_midi_bytes(
        read_samples(out, "test")[sample_key(PERFORMANCES[3].midi_filename)]["mid"]
    )
    expected = np.asarray(sorted(SUSTAINED, key=lambda n: (n[0], n[2])))
    np.testing.assert_allclose(notes[:, [START, END, PITCH]], expected, atol=1e-3)


def test_resampled_mono_shards_feed_the_pipeline(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out, "--sample-rate", "16000", "--mono", "--max-tracks", "1") == 0
    members = next(iter(read_samples(out, "valid").values()))
    info = sf.info(io.BytesIO(members["flac"]))
    assert (info.samplerate, info.channels) == (16000, 1)
    raw = {"__key__": "k", **members}
    sample = decode_sample(
        raw, SampleSpec(16000, 1, None, ("audio", "notes"), "none"), np.random.default_rng(0)
    )
    assert sample["audio"].shape == (1, 48000) and len(sample["notes"]) == len(SUSTAINED)


def test_unreadable_audio_is_skipped_and_counted(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (root / PERFORMANCES[1].audio_filename).unlink()
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["maestro"]["written"]["train"] == 1 and index["maestro"]["skipped"] == {
        "unreadable": 1
    }
    assert PERFORMANCES[1].name in caplog.text


def test_missing_csv_is_a_one_line_error(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (root / "maestro-v3.0.0.csv").unlink()
    assert prepare(root, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "maestro-v*.csv" in err and "--root" in err
