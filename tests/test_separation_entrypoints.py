"""train.py / evaluate.py with solver=separation on the toy dataset (four stems per item): the
tiny preset trains, its checkpoint loads as a separator, evaluate writes the SDR tables, and the
test loop on two DDP processes gives the tables of one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicgen.separation.checkpoint import load_separator
from tests.fixtures.toy_shards import write_toy_dataset

REPO = Path(__file__).resolve().parents[1]
TOY = ["loader.batch_size=2", "loader.num_workers=0", "loader.train_batches_per_epoch=2"]


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, script, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
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


def run_test_loop(out: Path, devices: int, *overrides: str) -> dict:
    """The solver's test loop on ``devices`` local DDP processes (tests.fixtures.ddp_test_loop)."""
    run("-m", "tests.fixtures.ddp_test_loop", str(out), str(devices), *overrides)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_scores_on_two_processes_equal_one_process(tmp_path: Path) -> None:
    """3 test tracks (2 on rank 0, 1 on rank 1) and 1 (none on rank 1): the per-track records
    are gathered, so the medians and means equal those of one process."""
    for tracks in (3, 1):
        data = write_toy_dataset(
            tmp_path / f"toy{tracks}", {"train": 2, "valid": 1, "test": tracks}
        )
        overrides = ["experiment=separation_tiny", f"dataset.root={data}", *TOY]
        one = run_test_loop(tmp_path / f"one{tracks}.json", 1, *overrides)
        two = run_test_loop(tmp_path / f"two{tracks}.json", 2, *overrides)
        assert json.dumps(two, sort_keys=True) == json.dumps(one, sort_keys=True)  # NaN-safe
        assert len(one["tables"]["separation_tracks"]) == one["metrics"]["test/tracks"] == tracks
