"""The synthetic dataset: splits, shards, audio/MIDI agreement, captions, determinism, CLI."""

from __future__ import annotations

import argparse
import inspect
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from data.decode import SILENCE_DB
from data.prepare.__main__ import main
from data.prepare.synth import add_arguments, build_synth
from data.prepare.synth.build import DEFAULT_MINUTES, SPLIT_CYCLE, plan_example
from data.prepare.synth.captions import describe
from data.prepare.synth.corpus import list_pieces, pools, split_of
from data.prepare.synth.drums import CLOSED_HAT, KICK, RIDE, SNARE, drum_part
from data.prepare.synth.example import MIN_SEGMENT_SECONDS, trim_silent_tail
from data.prepare.synth.harmony import accompany, estimate_key, key_name
from data.prepare.synth.instruments import PALETTES, RANGES, stem_for
from data.prepare.synth.render import to_pcm16
from data.shards import SPLITS, STEMS, check_key
from musicgen.notes import END, IS_DRUM, PROGRAM, START, notes_from_midi_bytes

SEED = 3
MEMBERS = {"flac", "mid", "json", *(f"{stem}.flac" for stem in STEMS)}
SILENCE = 1e-4  # RMS (-80 dBFS) below which a 50 ms frame counts as silent


def read_dataset(root: Path) -> dict[str, dict]:
    """Every sample of a built dataset: key -> {"split", "shard", member extension -> bytes}."""
    index = json.loads((root / "index.json").read_text())
    samples: dict[str, dict] = {}
    for split, entry in index["splits"].items():
        for shard in entry["shards"]:
            with tarfile.open(root / shard) as tar:
                for member in tar.getmembers():
                    key, ext = member.name.split(".", 1)
                    sample = samples.setdefault(key, {"split": split, "shard": shard})
                    sample[ext] = tar.extractfile(member).read()
    return samples


def audio(sample: dict, ext: str) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(sample[ext]), dtype="int16")


def meta(sample: dict) -> dict:
    return json.loads(sample["json"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    build_synth(root, minutes=1.0, seed=SEED, workers=2)
    return root


@pytest.fixture(scope="module")
def samples(tiny: Path) -> dict[str, dict]:
    return read_dataset(tiny)


def test_split_depends_on_the_piece_only() -> None:
    pieces = list_pieces()
    grouped = pools()
    assert set(grouped) == set(SPLITS)
    for split, by_style in grouped.items():
        assert all(p.split == split == split_of(p.source) for ps in by_style.values() for p in ps)
    train = sum(len(ps) for ps in grouped["train"].values()) / len(pieces)
    assert 0.75 < train < 0.85
    for seed in (0, 1, 99):
        for index in range(40):
            spec = plan_example(seed, index, grouped)
            assert (
                spec.split == SPLIT_CYCLE[index % len(SPLIT_CYCLE)] == split_of(spec.piece.source)
            )


def test_no_piece_in_two_splits_across_builds(samples: dict, tmp_path: Path) -> None:
    other = tmp_path / "other"
    build_synth(other, minutes=0.6, seed=SEED + 10, workers=1)
    split_of_piece: dict[str, str] = {}
    for sample in [*samples.values(), *read_dataset(other).values()]:
        info = meta(sample)
        assert info["split"] == sample["split"] == split_of(info["source"])
        assert split_of_piece.setdefault(info["piece"], info["split"]) == info["split"]


def test_shards_keys_and_members(tiny: Path, samples: dict) -> None:
    index = json.loads((tiny / "index.json").read_text())
    shards = []
    for split in SPLITS:  # round-robin into at least 8 shards (fewer samples: one shard each)
        entry = index["splits"][split]
        count = min(8, entry["num_samples"])
        assert entry["shards"] == [f"{split}-{i:06d}.tar" for i in range(count)]
        assert sum(entry["samples_per_shard"]) == entry["num_samples"]
        assert max(entry["samples_per_shard"]) - min(entry["samples_per_shard"]) <= 1
        shards += entry["shards"]
    assert sorted(p.name for p in tiny.iterdir()) == sorted(["index.json", *shards])
    assert {s["split"] for s in samples.values()} == set(SPLITS)
    for key, sample in samples.items():
        assert check_key(key) == key and "." not in key
        assert set(sample) - {"split", "shard"} == MEMBERS
        assert re.fullmatch(rf"{meta(sample)['piece']}-a\d{{4}}", key)


def test_index_matches_the_tars(tiny: Path, samples: dict) -> None:
    index = json.loads((tiny / "index.json").read_text())
    assert index["sample_rate"] == 32000 and index["stems"] == list(STEMS)
    for split, entry in index["splits"].items():
        mine = [s for s in samples.values() if s["split"] == split]
        assert entry["num_samples"] == len(mine) == sum(entry["samples_per_shard"])
        seconds = sum(len(audio(s, "flac")[0]) / 32000 for s in mine)
        assert entry["total_seconds"] == pytest.approx(seconds, abs=1e-2)
        assert entry["total_seconds"] == pytest.approx(
            sum(meta(s)["duration"] for s in mine), abs=1e-2
        )
    total = sum(e["total_seconds"] for e in index["splits"].values())
    assert 60 <= total < 60 + 32  # stops at the first example that reaches one minute


def test_mix_is_the_sum_of_the_stems(samples: dict) -> None:
    for sample in samples.values():
        mix, rate = audio(sample, "flac")
        assert rate == meta(sample)["sample_rate"] == 32000 and mix.ndim == 1
        stems = [audio(sample, f"{stem}.flac")[0] for stem in STEMS]
        assert all(s.shape == mix.shape for s in stems)
        np.testing.assert_array_equal(np.sum(stems, axis=0, dtype=np.int32), mix)
        peak_db = 20 * np.log10(np.abs(mix).max() / 32768)
        assert -1.5 < peak_db < -0.9


def _frame_rms(wav: np.ndarray, rate: int, hop: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    size = int(hop * rate)
    count = len(wav) // size
    frames = wav[: count * size].astype(np.float64).reshape(count, size) / 32768
    return np.arange(count) * hop, np.sqrt(np.mean(frames**2, axis=1))


def test_notes_lie_inside_the_audio_and_sound_where_they_say(samples: dict) -> None:
    for key, sample in samples.items():
        info = meta(sample)
        notes = notes_from_midi_bytes(sample["mid"])
        assert len(notes) and notes[:, START].min() >= 0 and notes[:, END].max() <= info["duration"]
        instruments = {(i["program"], i["is_drum"]) for i in info["instruments"]}
        assert {(int(p), bool(d)) for p, d in notes[:, [PROGRAM, IS_DRUM]]} == instruments
        for stem in STEMS:
            wav, rate = audio(sample, f"{stem}.flac")
            own = notes[
                [stem_for(int(p), bool(d)) == stem for p, d in notes[:, [PROGRAM, IS_DRUM]]]
            ]
            if not len(own):
                assert not wav.any(), f"{key}: {stem} has no notes but is not silent"
                continue
            times, rms = _frame_rms(wav, rate)
            sounding = np.zeros(len(times), dtype=bool)
            recent = np.zeros(len(times), dtype=bool)
            for start, end in own[:, [START, END]]:
                sounding |= (times >= start + 0.02) & (times + 0.05 <= max(end, start + 0.1))
                recent |= (times + 0.05 > start) & (times < end + 2.0)
            assert sounding.any() and rms[sounding].min() > 3 * SILENCE, f"{key}: {stem} inaudible"
            assert (rms[~recent] < SILENCE).all(), f"{key}: {stem} sounds where it has no notes"


def test_captions_describe_the_example(samples: dict) -> None:
    captions = []
    for sample in samples.values():
        info = meta(sample)
        caption = info["caption"]
        assert caption.strip() and info["key"] in caption and str(info["tempo"]) in caption
        assert re.fullmatch(r"[A-G][b#]? (major|minor)", info["key"])
        has_drums = any(i["is_drum"] for i in info["instruments"])
        assert ("drums" in caption) == has_drums == ("drums" in info["tags"])
        assert info["composer"] and info["genre"] in info["tags"]
        captions.append(caption)
    assert len(set(captions)) == len(captions)
    worded = set()
    for seed in range(40):
        caption, _ = describe(
            period="Baroque",
            genre="chorale",
            composer="J. S. Bach",
            composer_tag="bach",
            instruments=["choir", "strings", "tuba"],
            key="A minor",
            bpm=60,  # slow: the moods and pace words below
            rng=np.random.default_rng(seed),
        )
        assert "A minor" in caption and "60" in caption
        worded.add(
            re.sub(r"\b(an? )?(melancholic|somber|mournful|solemn|slow|unhurried)\b", "W", caption)
        )
    assert len(worded) >= 4  # several templates, not only synonyms


def test_same_seed_gives_identical_bytes_whatever_the_workers(
    samples: dict, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    build_synth(again, minutes=0.5, seed=SEED, workers=1)  # the fixture used two workers
    rebuilt = read_dataset(again)
    common = sorted(set(rebuilt) & set(samples))
    assert len(common) >= 2 and set(rebuilt) <= set(samples)
    for key in common:
        for ext in MEMBERS:
            assert rebuilt[key][ext] == samples[key][ext], f"{key}.{ext} differs"


def test_cli_builds_replaces_stale_shards_and_reports_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cli"
    out.mkdir()
    (out / "train-000007.tar").write_bytes(b"stale")
    args = ["synth", "--out", str(out), "--minutes", "0.2", "--seed", "4", "--workers", "1"]
    assert main([*args, "--sample-rate", "16000"]) == 0
    assert not (out / "train-000007.tar").exists() and not (out / ".staging").exists()
    built = read_dataset(out)
    assert len(built) == 1
    (sample,) = built.values()
    assert audio(sample, "flac")[1] == 16000 and sample["split"] == "train"
    assert "wrote" in capsys.readouterr().out
    for bad, words in (
        (["--minutes", "0"], "--minutes"),
        (["--sample-rate", "100"], "--sample-rate"),
        (["--workers", "0"], "--workers"),
    ):
        assert main(["synth", "--out", str(tmp_path / "bad"), *bad]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error:") and words in error and "\n" not in error
    assert not (tmp_path / "bad").exists()


def test_drums_follow_the_meter() -> None:
    # a one-beat pickup, bars of 4/4, 6/8 and 3/4, then a short last bar
    bars = np.array(
        [[0.0, 1.0, 4, 4], [1.0, 4.0, 4, 4], [5.0, 3.0, 6, 8], [8.0, 3.0, 3, 4], [11.0, 1.0, 4, 4]]
    )
    hits = drum_part(bars, np.random.default_rng(0))
    at = lambda pitch: sorted(hits[hits[:, 1] == pitch, 0].tolist())  # noqa: E731
    assert at(KICK) == [1.0, 3.0, 5.0, 8.0, 11.0]  # downbeats, and beat 3 of 4/4
    assert at(SNARE) == [0.0, 2.0, 4.0, 6.5, 9.0, 10.0]  # backbeats (a 3/4 bar: beats 2 and 3)
    cymbals = hits[np.isin(hits[:, 1], [CLOSED_HAT, RIDE]), 0]
    assert {0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.5, 8.0, 9.0, 10.0, 11.0} <= set(cymbals.tolist())
    assert ((hits[:, 2] >= 1) & (hits[:, 2] <= 127)).all()


def test_key_estimation_and_accompaniment() -> None:
    scale = np.array(
        [[i, 1.0, p] for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60])], float
    )
    assert estimate_key(scale) == (0, "major") and key_name(0, "major") == "C major"
    minor = scale.copy()
    minor[:, 2] = [57, 59, 60, 62, 64, 65, 68, 69, 64, 60, 57]
    assert key_name(*estimate_key(minor)) == "A minor"
    bars = np.array([[0.0, 4.0, 4, 4], [4.0, 4.0, 4, 4], [8.0, 3.0, 4, 4]])
    bass, chords = accompany(scale, bars, 0, "major", strum=False)
    assert (bass[:, 2] >= 36).all() and (bass[:, 2] <= 47).all()
    assert bass[:, 0].min() == 0.0 and (bass[:, 0] + bass[:, 1]).max() == 11.0
    assert set((chords[chords[:, 0] == 0.0, 2] % 12).astype(int)) == {0, 4, 7}  # C major under C-D


def test_palettes_respect_stems_and_ranges() -> None:
    for style in PALETTES.values():
        for stem, families in style.items():
            for program in (p for family in families for p in family):
                assert stem_for(program, False) == stem and program in RANGES
    assert stem_for(0, True) == "drums"


def test_no_window_of_the_shortest_crop_is_silent(samples: dict) -> None:
    """Every 0.25 s window (the shortest training crop) of every mix is louder than the loader's
    silence threshold, so no training crop of the default data is skipped as silent."""
    for key, sample in samples.items():
        mix = audio(sample, "flac")[0].astype(np.float64) / 32768
        window = round(MIN_SEGMENT_SECONDS * meta(sample)["sample_rate"])
        power = np.concatenate([[0.0], np.cumsum(mix**2)])
        rms = np.sqrt((power[window:] - power[:-window]) / window)
        assert rms.min() > 10 ** (SILENCE_DB / 20), key


def test_silent_tails_are_trimmed_and_silent_stretches_dropped() -> None:
    rate, tone = 1000, 0.1 * np.sin(np.arange(2000) / 3.0)

    def pcm(*parts: np.ndarray) -> dict[str, np.ndarray]:
        mix = to_pcm16(np.concatenate(parts))
        return {"mix": mix, "other": mix.copy()}

    trimmed = trim_silent_tail(pcm(tone, np.zeros(900)), rate, min_end=2000)
    assert trimmed is not None and 2000 <= len(trimmed["mix"]) < 2250
    assert np.array_equal(trimmed["mix"], trimmed["other"])
    assert trim_silent_tail(pcm(tone, np.zeros(900)), rate, min_end=2800) is None
    assert trim_silent_tail(pcm(tone, np.zeros(300), tone), rate, min_end=0) is None
    assert trim_silent_tail(pcm(np.zeros(3000)), rate, min_end=0) is None


def test_default_build_has_a_train_split_of_two_hours() -> None:
    """The default ``--minutes`` (CLI, ``build_synth`` and ``dataset.auto_prepare``) puts over
    two hours into the train split: examples go to train in 8 of every 10 indices, and a
    160-minute build rendered 127 train minutes (index.json of 2026-12-05)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--out", "x"]).minutes == DEFAULT_MINUTES
    assert inspect.signature(build_synth).parameters["minutes"].default == DEFAULT_MINUTES
    config = yaml.safe_load((Path(__file__).parents[1] / "conf/dataset/synth.yaml").read_text())
    assert config["auto_prepare"]["minutes"] == DEFAULT_MINUTES
    train_share = SPLIT_CYCLE.count("train") / len(SPLIT_CYCLE)
    assert DEFAULT_MINUTES * train_share >= 120 * 1.05  # a margin for the drawn durations
