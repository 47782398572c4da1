"""``python -m musicgen.generate``: WAV files of the requested duration, with and without a melody."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from musicgen.errors import UserError
from musicgen.generate import main
from musicgen.musicgen_model import MusicGen
from tests.fixtures.repeat import Repeat
from tests.test_musicgen_solver import (
    RATE,
    make_solver,
    tone_batch,
    trainer,
    write_tiny_codec,
    write_tiny_text_encoder,
)

REPO = Path(__file__).resolve().parents[1]


def checkpoint(assets: dict, out: Path, melody: bool) -> Path:
    fields = ["audio", "caption", "stems"] if melody else ["audio", "caption"]
    solver = make_solver(assets, melody=melody, data_fields=fields)
    run = trainer(max_steps=1)
    run.fit(solver, DataLoader(Repeat(tone_batch()), batch_size=None))
    run.save_checkpoint(out)
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("musicgen_ckpt")
    assets = {
        "codec": write_tiny_codec(root / "codec"),
        "text": write_tiny_text_encoder(root / "text"),
    }
    return {
        "melody": checkpoint(assets, root / "melody.ckpt", True),
        "text": checkpoint(assets, root / "text.ckpt", False),
    }


def read(path: Path) -> tuple[torch.Tensor, int]:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return torch.from_numpy(audio), rate


def test_writes_a_wav_of_the_requested_duration(checkpoints: dict, tmp_path: Path) -> None:
    out = tmp_path / "text.wav"
    args = ["--checkpoint", str(checkpoints["text"]), "--text", "calm chorale", "--top-k", "5"]
    assert main([*args, "--duration", "0.7", "--out", str(out)]) == 0
    audio, rate = read(out)
    assert rate == RATE and audio.shape == (round(0.7 * RATE), 1)
    again = tmp_path / "again.wav"
    assert main([*args, "--duration", "0.7", "--out", str(again)]) == 0
    assert torch.equal(read(again)[0], audio)  # the seed fixes the sample


def test_melody_file_conditions_the_melody_model(checkpoints: dict, tmp_path: Path) -> None:
    melody = tmp_path / "melody.wav"
    batch = tone_batch(0.4)  # shorter than the duration: repeated
    sf.write(melody, batch["stems"][0, 2, 0].numpy(), 22050)  # any rate: resampled
    out = tmp_path / "melody_out.wav"
    common = ["--checkpoint", str(checkpoints["melody"]), "--text", "toy piece", "--top-k", "5"]
    assert main([*common, "--melody", str(melody), "--duration", "1.0", "--out", str(out)]) == 0
    audio, rate = read(out)
    assert rate == RATE and audio.shape == (RATE, 1)
    plain = tmp_path / "plain.wav"
    assert main([*common, "--duration", "0.5", "--out", str(plain)]) == 0
    assert read(plain)[0].shape == (RATE // 2, 1)


def test_user_errors_are_one_line(
    checkpoints: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    melody = tmp_path / "melody.wav"
    sf.write(melody, tone_batch(0.2)["audio"][0, 0].numpy(), RATE)
    cases = [
        ["--checkpoint", str(tmp_path / "missing.ckpt"), "--text", "x"],
        ["--checkpoint", str(checkpoints["text"]), "--text", "x", "--melody", str(melody)],
        ["--checkpoint", str(checkpoints["text"]), "--text", "x", "--duration", "0"],
        ["--checkpoint", str(checkpoints["melody"]), "--text", "x", "--melody", str(tmp_path)],
    ]
    for args in cases:
        assert main([*args, "--out", str(tmp_path / "x.wav")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()  # after any loading progress bars
        assert lines[-1].startswith("error: ") and sum("error" in line for line in lines) == 1
    assert not (tmp_path / "x.wav").exists()


def test_module_entry_point(checkpoints: dict, tmp_path: Path) -> None:
    out = tmp_path / "cli.wav"
    result = subprocess.run(
        [
            sys.executable, "-m", "musicgen.generate", "--checkpoint", str(checkpoints["text"]),
            "--text", "calm", "--duration", "0.3", "--out", str(out), "--device", "cpu",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0.30 s at 16000 Hz" in result.stdout and read(out)[0].shape == (round(0.3 * RATE), 1)


def test_longer_than_a_segment_is_generated_in_prompted_windows(checkpoints: dict) -> None:
    model = MusicGen.from_checkpoint(checkpoints["melody"])
    assert model.segment_seconds == 1.0
    calls: list[tuple[int, torch.Tensor | None, torch.Tensor]] = []
    generate = model.lm.generate

    def recording(*args, **kwargs):
        codes = generate(*args, **kwargs)
        calls.append((kwargs["num_frames"], kwargs["prompt"], codes))
        return codes

    model.lm.generate = recording
    melody = tone_batch(2.5)["stems"][:1, 2]  # (1, C, T): the oracle model's melody stems
    wav = model.generate(
        ["toy piece"],
        melody=melody,
        melody_sr=RATE,
        melody_stems=model.melody_as_stems(melody),
        duration=2.5,
        top_k=5,
        generator=torch.Generator().manual_seed(0),
    )
    assert wav.shape == (1, 1, round(2.5 * RATE))
    window = round(model.frame_rate)  # one second of frames
    stride = window // 2
    total = math.ceil(2.5 * RATE / model.codec.config.hop_length)
    starts = list(range(0, total - window + stride, stride))
    assert [frames for frames, _, _ in calls] == [min(window, total - s) for s in starts]
    assert calls[0][1] is None
    for (_, _, previous), (_, prompt, _), start, before in zip(
        calls, calls[1:], starts[1:], starts, strict=False
    ):
        assert torch.equal(prompt, previous[..., start - before :])  # the overlap is kept


def test_a_stride_outside_the_segment_is_a_user_error(checkpoints: dict) -> None:
    model = MusicGen.from_checkpoint(checkpoints["text"])
    with pytest.raises(UserError, match="extend_stride must be in"):
        model.generate(["x"], duration=2.0, extend_stride=1.5)
