"""``python -m musicgen.separate``: stems written for good input of any rate/channels/length,
one ``error:`` line and exit 2 for bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen.separate import main, separate_file
from musicgen.separation.apply import separate
from musicgen.separation.checkpoint import load_separator
from tests.fixtures.separation import tiny_spleeter, write_separator_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEMS = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 8 kHz stereo Spleeter whose ratio masks cover every bin (stems sum to the mix)."""
    return write_separator_checkpoint(
        tiny_spleeter(seed=1), tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    )


def _wav(path: Path, seconds: float, rate: int, channels: int, silent: bool = False) -> np.ndarray:
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (round(seconds * rate), channels))
    audio = np.zeros_like(audio) if silent else audio
    sf.write(path, audio.astype(np.float32), rate, subtype="FLOAT")
    return audio.astype(np.float32)


@pytest.mark.parametrize(
    ("rate", "channels", "silent"),
    [(8000, 2, False), (8000, 1, False), (11025, 2, False), (8000, 2, True)],
    ids=["stereo", "mono", "other-rate", "silence"],
)
def test_stems_have_the_inputs_rate_channels_and_length(
    tmp_path: Path, checkpoint: Path, rate: int, channels: int, silent: bool
) -> None:
    audio = _wav(tmp_path / "in.wav", 1.0, rate, channels, silent)
    assert (
        main([str(tmp_path / "in.wav"), str(tmp_path / "out"), "--checkpoint", str(checkpoint)])
        == 0
    )
    outs = [
        sf.read(tmp_path / "out" / f"{stem}.wav", dtype="float32", always_2d=True) for stem in STEMS
    ]
    for out, out_rate in outs:
        assert out_rate == rate and out.shape == audio.shape and np.isfinite(out).all()
    total = sum(out for out, _ in outs)
    if rate == 8000:  # the model's rate: the ratio masks give back the mix
        np.testing.assert_allclose(total, audio, atol=1e-5)
    if silent:
        assert np.abs(total).max() == 0


def test_long_input_in_blocks_and_chosen_stems(tmp_path: Path, checkpoint: Path) -> None:
    """Blocks of 0.5 s (cross-faded) instead of a minute: the stems still sum to the mix and
    stay within a few percent of one separation of the whole file."""
    audio = _wav(tmp_path / "in.wav", 2.2, 8000, 2)
    written = separate_file(
        tmp_path / "in.wav", tmp_path / "out", checkpoint, stems="vocals,bass", block_seconds=0.5
    )
    assert [p.name for p in written] == ["vocals.wav", "bass.wav"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bass.wav", "vocals.wav"]
    separate_file(tmp_path / "in.wav", tmp_path / "all", checkpoint, block_seconds=0.5)
    total = sum(sf.read(tmp_path / "all" / f"{s}.wav", dtype="float32")[0] for s in STEMS)
    np.testing.assert_allclose(total, audio, atol=1e-5)
    model = tiny_spleeter(seed=1)
    whole = separate(model, torch.from_numpy(audio.T.copy()), 8000)[0]
    vocals = sf.read(tmp_path / "out" / "vocals.wav", dtype="float32")[0].T
    error = np.abs(vocals - whole[3].numpy()).mean() / np.abs(whole[3].numpy()).mean()
    assert error < 0.05, error


@pytest.mark.slow
def test_ten_minutes_of_mono(tmp_path: Path, checkpoint: Path) -> None:
    audio = _wav(tmp_path / "in.wav", 600.0, 8000, 1)
    assert (
        main([str(tmp_path / "in.wav"), str(tmp_path / "out"), "--checkpoint", str(checkpoint)])
        == 0
    )
    total = sum(sf.read(tmp_path / "out" / f"{s}.wav", dtype="float32")[0] for s in STEMS)
    np.testing.assert_allclose(total, audio[:, 0], atol=1e-5)


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_one_error_line(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    good = tmp_path / "in.wav"
    _wav(good, 0.5, 8000, 2)
    ckpt = ["--checkpoint", str(checkpoint)]
    assert "does not exist" in _error(
        capsys, [str(tmp_path / "missing.wav"), str(tmp_path / "o"), *ckpt]
    )
    (tmp_path / "text.wav").write_text("not audio")
    assert "cannot read audio file" in _error(
        capsys, [str(tmp_path / "text.wav"), str(tmp_path / "o"), *ckpt]
    )
    assert "unknown stem 'piano'" in _error(
        capsys, [str(good), str(tmp_path / "o"), *ckpt, "--stems", "vocals,piano"]
    )
    assert "unknown Spleeter model" in _error(
        capsys, [str(good), str(tmp_path / "o"), "--model", "spleeter:3stems"]
    )
    empty = tmp_path / "weights"
    empty.mkdir()
    message = _error(
        capsys,
        [str(good), str(tmp_path / "o"), "--model", "spleeter:4stems", "--model-dir", str(empty)],
    )
    assert "are not in" in message and "4stems" in message
    assert "not in" in _error(
        capsys, [str(good), str(tmp_path / "o"), "--model", "htdemucs", "--model-dir", str(empty)]
    )
    assert "does not exist" in _error(
        capsys, [str(good), str(tmp_path / "o"), "--checkpoint", str(tmp_path / "no.ckpt")]
    )
    sf.write(tmp_path / "six.wav", np.zeros((800, 6), np.float32), 8000)
    assert "6 channels" in _error(capsys, [str(tmp_path / "six.wav"), str(tmp_path / "o"), *ckpt])
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # ~4 s of imports; the README test runs its --help
def test_module_entry_point(tmp_path: Path, checkpoint: Path) -> None:
    _wav(tmp_path / "in.wav", 0.3, 8000, 2)
    done = subprocess.run(
        [sys.executable, "-m", "musicgen.separate", str(tmp_path / "in.wav"), str(tmp_path / "out"),
         "--checkpoint", str(checkpoint), "--stems", "vocals"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "vocals.wav").is_file()


def test_spleeter_release_by_name_and_by_folder(tmp_path: Path) -> None:
    """``--model spleeter:2stems --model-dir DIR`` reads ``DIR/2stems`` (a TensorFlow-written
    checkpoint in the released layout); ``--checkpoint`` takes the folder itself."""
    release = Path(__file__).parent / "fixtures" / "spleeter_tf"
    (tmp_path / "weights" / "2stems").mkdir(parents=True)
    for name in ("checkpoint", "model.index", "model.data-00000-of-00001"):
        shutil.copy(release / name, tmp_path / "weights" / "2stems" / name)
    _wav(tmp_path / "in.wav", 0.5, 44100, 2)
    args = [str(tmp_path / "in.wav")]
    assert (
        main(
            [
                *args,
                str(tmp_path / "a"),
                "--model",
                "spleeter:2stems",
                "--model-dir",
                str(tmp_path / "weights"),
            ]
        )
        == 0
    )
    assert main([*args, str(tmp_path / "b"), "--checkpoint", str(release)]) == 0
    for stem in ("vocals", "accompaniment"):
        a, b = (sf.read(tmp_path / d / f"{stem}.wav", dtype="float32")[0] for d in "ab")
        assert a.shape == (22050, 2) and np.array_equal(a, b)
    wide = load_separator("spleeter:2stems-16kHz", tmp_path / "weights")  # same weights, 1536 bins
    assert wide.freq_bins == 1536 and wide.stems == ("vocals", "accompaniment")
