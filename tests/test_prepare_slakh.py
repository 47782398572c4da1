"""``python -m data.prepare slakh``: a miniature Slakh2100 copy in the real layout becomes shards."""

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
from data.prepare.slakh import MT3_PROGRAMS, stem_program
from data.shards import STEMS as STEM_GROUPS
from musicgen.notes import END, IS_DRUM, PITCH, PROGRAM, START, notes_from_midi_bytes
from tests.fixtures.prepared import read_samples
from tests.fixtures.slakh import MT3_PROGRAMS as FIXTURE_TOKENS
from tests.fixtures.slakh import RATE, SECONDS, STEMS, TRACKS, write_slakh_copy


@pytest.fixture(autouse=True)
def only_slakh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatcher, "PREPARERS", {"slakh": "data.prepare.slakh"})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slakh_copy(tmp_path_factory.mktemp("slakh-src"))


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "slakh"))


def prepare(root: Path, out: Path, *extra: str) -> int:
    return dispatcher.main(["slakh", "--root", str(root), "--out", str(out), *extra])


def test_splits_keys_and_untouched_mix(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    for split, source in (("train", "train"), ("valid", "validation"), ("test", "test")):
        samples = read_samples(out, split)
        assert sorted(samples) == sorted(TRACKS[source])
        for key, members in samples.items():
            assert set(members) == {"flac", "mid", "json"}
            assert members["flac"] == (root / source / key / "mix.flac").read_bytes()
            meta = json.loads(members["json"])
            assert meta["track"] == key and meta["programs"] == "mt3"
            assert meta["duration"] == pytest.approx(SECONDS) and "guitar" in meta["caption"]
    assert "Track00100" not in json.dumps(json.loads((out / "index.json").read_text()))


def test_notes_use_mt3_class_programs_and_only_rendered_stems(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    notes = notes_from_midi_bytes(read_samples(out, "test")["Track01876"]["mid"])
    rendered = {s: v for s, v in STEMS.items() if v[4]}
    assert len(notes) == sum(len(v[5]) for v in rendered.values())
    assert 64 not in notes[:, PITCH]  # the pad was not rendered
    for stem, (_, _, _, is_drum, _, stem_notes) in rendered.items():
        pitches = {p for *_, p in stem_notes}
        rows = notes[np.isin(notes[:, PITCH], list(pitches)) & (notes[:, IS_DRUM] == is_drum)]
        assert set(rows[:, PROGRAM]) == {FIXTURE_TOKENS[stem]}
    piano = notes[notes[:, PITCH] == 67][0]
    assert piano[END] == pytest.approx(0.9, abs=1e-3)  # held by the pedal


def test_metadata_programs_are_kept_raw_on_request(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out, "--programs", "metadata") == 0
    notes = notes_from_midi_bytes(read_samples(out, "valid")["Track01501"]["mid"])
    assert set(notes[notes[:, IS_DRUM] == 0][:, PROGRAM]) == {30, 33, 1}


def test_mt3_class_map() -> None:
    assert MT3_PROGRAMS[30] == 29 and MT3_PROGRAMS[27] == 26 and MT3_PROGRAMS[1] == 0
    assert MT3_PROGRAMS[4] == 4 and MT3_PROGRAMS[45] == 48 and MT3_PROGRAMS[59] == 56
    assert MT3_PROGRAMS[75] == 73 and 38 not in MT3_PROGRAMS
    assert stem_program({"is_drum": True, "program_num": 0}, "mt3") == (0, True)
    assert stem_program({"is_drum": False, "program_num": 38}, "mt3") == (38, False)


def test_grouped_stems_sum_to_the_mix_and_feed_the_pipeline(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare(root, out, "--stems", "--max-tracks", "1") == 0
    members = read_samples(out, "train")["Track00001"]
    assert {f"{g}.flac" for g in STEM_GROUPS} <= set(members)
    mix, _ = sf.read(io.BytesIO(members["flac"]))
    stems = [sf.read(io.BytesIO(members[f"{g}.flac"]))[0] for g in STEM_GROUPS]
    np.testing.assert_allclose(sum(stems), mix, atol=2e-4)
    assert not np.any(stems[STEM_GROUPS.index("vocals")])
    spec = SampleSpec(RATE, 1, 1.0, ("audio", "stems", "notes"), "start")
    sample = decode_sample({"__key__": "k", **members}, spec, np.random.default_rng(0))
    assert sample["stems"].shape == (4, 1, RATE) and len(sample["notes"]) > 0
    assert sample["notes"][:, START].max() < 1.0


def test_broken_track_is_skipped_and_missing_split_is_an_error(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (root / "train" / "Track00002" / "metadata.yaml").unlink()
    out = tmp_path / "out"
    assert prepare(root, out) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["slakh"]["written"]["train"] == 1 and index["slakh"]["skipped"] == {"unusable": 1}
    shutil.rmtree(root / "validation")
    capsys.readouterr()
    assert prepare(root, tmp_path / "out2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "validation" in err[0] and "--root" in err[0]
