"""train.py / evaluate.py / musicgen.generate with the melody preset on the toy dataset: a run
that resumes, the Table 1 evaluation, and a sample from the checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import soundfile as sf
import torch

from tests.test_musicgen_solver import write_tiny_codec, write_tiny_text_encoder

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_train_resume_evaluate_and_generate(toy_dataset: Path, tmp_path: Path) -> None:
    machine = tmp_path / "machine-a"
    codec = write_tiny_codec(machine / "weights" / "codec")
    text = write_tiny_text_encoder(machine / "weights" / "text")
    preset = [
        "experiment=musicgen_melody_tiny",
        f"dataset.root={toy_dataset}",
        "solver.data.sample_rate=16000",
        f"solver.module.codec_checkpoint={codec}",
        f"solver.module.text.local_dir={text}",
        "solver.module.lm.dim=32",
        "solver.module.lm.num_heads=2",
        "solver.module.lm.num_layers=1",
        "solver.module.lm.ffn_dim=64",
        "solver.module.samples.count=1",
        "solver.module.samples.duration=0.5",
        "loader.batch_size=2",
        "loader.num_workers=0",
        f"paths.runs_dir={machine / 'runs'}",
        f"paths.weights_dir={machine / 'weights'}",
    ]
    train = [
        *preset,
        "logger=csv",
        "trainer.limit_val_batches=1",
        "loader.train_batches_per_epoch=2",
    ]
    run("train.py", *train, "trainer.max_steps=2")
    (run_dir,) = (machine / "runs").iterdir()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    result = run("train.py", *train, "trainer.max_steps=4")
    assert "resuming from" in result.stdout + result.stderr
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4

    # Portable: no path of the training machine inside; moved elsewhere (the codec file gone:
    # the LM checkpoint holds it), the run evaluates and generates from the new folders.
    assert str(machine) not in repr(torch.load(ckpt, weights_only=True))
    moved = tmp_path / "machine-b"
    shutil.move(machine, moved)
    shutil.rmtree(moved / "weights" / "codec")
    ckpt = moved / "runs" / run_dir.name / "checkpoints" / "last.ckpt"
    run(
        "evaluate.py",
        "solver=musicgen_melody",  # the checkpoint brings its preset (no experiment=)
        f"dataset.root={toy_dataset}",
        f"paths.runs_dir={moved / 'runs'}",
        f"paths.weights_dir={moved / 'weights'}",
        f"checkpoint={ckpt}",
        "loader.batch_size=2",
        "loader.num_workers=0",
    )
    (eval_dir,) = (moved / "runs" / "eval").iterdir()
    table = json.loads((eval_dir / "musicgen_table1.json").read_text())
    ours = [row for row in table["rows"] if row["system"].startswith("ours")]
    assert [row["system"] for row in ours] == [
        "ours, text + melody (EMA weights)",
        "ours, text (EMA weights)",
    ]
    assert all(0.0 <= row["Cos"] <= 1.0 and row["FAD"] >= 0.0 for row in ours)

    out = tmp_path / "sample.wav"
    run("-m", "musicgen.generate", "--checkpoint", str(ckpt), "--text", "toy piece",
        "--duration", "3.0", "--top-k", "5", "--out", str(out),
        "--weights-dir", str(moved / "weights"))  # fmt: skip
    audio, rate = sf.read(out)
    assert rate == 16000 and len(audio) == 3 * 16000  # beyond the 2 s segment: windowed
