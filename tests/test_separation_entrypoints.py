"""train.py / evaluate.py with solver=separation on the toy dataset (four stems per item): the
tiny preset trains, its checkpoint loads as a separator, and evaluate writes the SDR tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicgen.separation.checkpoint import load_separator

REPO = Path(__file__).resolve().parents[1]
TOY = ["loader.batch_size=2", "loader.num_workers=0", "loader.train_batches_per_epoch=2"]


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, script, *overrides], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_train_and_evaluate_write_the_separation_tables(toy_dataset: Path, tmp_path: Path) -> None:
    common = [f"dataset.root={toy_dataset}", f"paths.runs_dir={tmp_path}", *TOY]
    run("train.py", "experiment=separation_tiny", "logger=csv", "trainer.max_steps=4", *common)
    (run_dir,) = tmp_path.iterdir()
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == 4 and state["solver_config"]["name"] == "separation"
    model = load_separator(checkpoint)
    assert model.stems == ("drums", "bass", "other", "vocals") and model.sample_rate == 16000

    run("evaluate.py", "solver=separation", f"checkpoint={checkpoint}", *common)
    (eval_dir,) = (tmp_path / "eval").iterdir()
    table = json.loads((eval_dir / "separation.json").read_text())["rows"]
    assert [row["stem"] for row in table] == ["drums", "bass", "other", "vocals", "mean"]
    assert all(row["Spleeter 4stems, masks (paper)"] is None for row in table)  # not MUSDB
    assert all(isinstance(row["mixture SDR"], float) for row in table)
    tracks = json.loads((eval_dir / "separation_tracks.json").read_text())["rows"]
    results = json.loads((eval_dir / "results.json").read_text())["rows"][0]
    assert results["test/tracks"] == len(tracks) > 0
    assert {"test/sdr", "test/usdr", "test/mix_sdr", "test/sdr_gain"} <= set(results)
