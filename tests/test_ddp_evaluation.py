"""Evaluation under DDP: MT3's scores and tables on 2 processes equal those of 1 process exactly,
and a rank without validation or test samples neither crashes nor hangs (compression, MT3 and,
in validation, MusicGen).

The 2-process runs use Lightning's DDP over gloo with 2 local processes, as ``trainer=ddp`` does:
through ``train.py`` for validation, and through :mod:`tests.fixtures.ddp_test_loop` (the
solver's test loop with the DataModule, so each rank reads its share) for the test split.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from solvers.transcription import MT3Solver
from tests.fixtures.toy_shards import write_toy_dataset
from tests.test_musicgen_solver import write_tiny_codec

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

REPO = Path(__file__).resolve().parents[1]
MT3 = [
    "experiment=mt3_tiny",
    "loader.eval_batch_size=1",
    "solver.module.max_decode_length=16",
]
COMPRESSION = [
    "experiment=compression_tiny",
    "solver.data.sample_rate=16000",
    "solver.data.eval_segment_seconds=2.0",
    "solver.module.opus_baseline=false",
]
MUSICGEN = [
    "experiment=musicgen_tiny",
    "solver.data.segment_seconds=1.0",
    "solver.data.eval_segment_seconds=1.0",
    "solver.module.samples.count=1",
    "solver.module.samples.duration=0.5",
]
SOLVERS = {"mt3": MT3, "compression": COMPRESSION}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``uneven``: 3 test tracks (2 on rank 0, 1 on rank 1); ``single``: 1 validation and 1 test
    sample (none on rank 1)."""
    root = tmp_path_factory.mktemp("ddp_eval")
    return {
        "uneven": write_toy_dataset(root / "uneven", {"train": 2, "valid": 1, "test": 3}),
        "single": write_toy_dataset(root / "single", {"train": 2, "valid": 1, "test": 1}),
        "codec": write_tiny_codec(root / "codec"),
    }


def run(*args: str) -> subprocess.CompletedProcess:
    """Run ``python *args`` in the repository; a hang fails the test after 300 s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_test_loop(out: Path, devices: int, *overrides: str) -> dict:
    run("-m", "tests.fixtures.ddp_test_loop", str(out), str(devices), *overrides)
    return json.loads(out.read_text())


def print_table(name: str, rows: list[dict]) -> None:
    print(f"{name}:")
    for row in rows:
        print(
            "  " + " | ".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in row.values())
        )


@pytest.mark.slow
def test_mt3_scores_on_two_processes_equal_one_process(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    overrides = ["--half-oracle", *MT3, f"dataset.root={datasets['uneven']}"]
    one = run_test_loop(tmp_path / "one.json", 1, *overrides)
    two = run_test_loop(tmp_path / "two.json", 2, *overrides)
    for name, rows in one["tables"].items():
        print_table(f"1 process, {name}", rows)
        print_table(f"2 processes, {name}", two["tables"][name])
    assert two == one
    tracks = one["tables"]["mt3_tracks"]
    assert [t["key"] for t in tracks] == ["toy-test-000", "toy-test-001", "toy-test-002"]
    onset = [t["onset_f1"] for t in tracks]
    assert len(set(onset)) == 3  # rank means would differ from the mean over tracks
    assert one["metrics"]["test/onset_f1"] == pytest.approx(np.mean(onset), abs=1e-7)
    assert one["metrics"]["test/loss"] == pytest.approx(np.mean([t["loss"] for t in tracks]))


@pytest.mark.slow
@pytest.mark.parametrize("solver", SOLVERS)
def test_a_rank_without_test_samples(
    solver: str, datasets: dict[str, Path], tmp_path: Path
) -> None:
    out = run_test_loop(
        tmp_path / "two.json",
        2,
        *SOLVERS[solver],
        f"dataset.root={datasets['single']}",
        "loader.num_workers=0",
    )
    if solver == "mt3":
        assert len(out["tables"]["mt3_tracks"]) == 1
    else:
        assert {row["items"] for row in out["tables"]["compression"][:3]} == {1}
    assert all(np.isfinite(v) for v in out["metrics"].values())


@pytest.mark.slow
@pytest.mark.parametrize("solver", [*SOLVERS, "musicgen"])
def test_training_with_one_validation_sample_on_two_ranks(
    solver: str, datasets: dict[str, Path], tmp_path: Path
) -> None:
    musicgen = [*MUSICGEN, f"solver.module.codec_checkpoint={datasets['codec']}"]
    run(
        "train.py",
        *SOLVERS.get(solver, musicgen),
        "trainer=ddp",
        "trainer.max_steps=2",
        "logger=csv",
        f"dataset.root={datasets['single']}",
        f"paths.runs_dir={tmp_path}",
        "loader.batch_size=1",
        "loader.num_workers=0",
        f"loader.train_batches_per_epoch={1 if solver == 'compression' else 2}",
    )
    (metrics,) = tmp_path.glob("*/logs/**/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    valid = {"compression": "valid/mel", "mt3": "valid/onset_f1", "musicgen": "valid/ce"}[solver]
    assert [float(r[valid]) for r in rows if r.get(valid)]  # one validation, logged


def test_tracks_are_sorted_and_the_dataset_score_is_their_mean() -> None:
    torch.manual_seed(0)
    tiny = {"d_model": 32, "num_heads": 2, "head_dim": 16, "d_ff": 64}
    tiny |= {"num_encoder_layers": 1, "num_decoder_layers": 1}
    mt3 = MT3Solver(model=tiny, optim={"name": "adamw", "lr": 1e-3}, max_decode_length=8).eval()
    notes = torch.tensor([[0.5, 1.5, 60, 100, 0, 0, 0, 0], [1.0, 1.8, 64, 100, 0, 0, 0, 0]])
    batch = {
        "audio": torch.randn(2, 1, 20_000) * 0.1,
        "notes": [notes, notes[:1]],
        "key": ["b", "a"],
    }
    with torch.no_grad():
        mt3.test_step(batch, 0)
    scores = mt3._finish("test")
    rows = mt3.evaluation_tables()[2].rows
    assert [row["key"] for row in rows] == ["a", "b"]
    assert scores["loss"] == np.mean([row["loss"] for row in rows])
    assert mt3._finish("test") == {} and mt3.tracks["test"] == []


@pytest.mark.slow
def test_evaluate_py_on_two_processes_writes_the_one_process_tables(
    datasets: dict[str, Path], tmp_path: Path
) -> None:
    """``python evaluate.py ... trainer=ddp``: every rank reads its own share of the split, so
    each track is scored once and the tables equal those of one process."""
    data = [f"dataset.root={datasets['uneven']}", "loader.num_workers=0"]
    run("train.py", *MT3, *data, "trainer.max_steps=1", "logger=csv", "trainer.limit_val_batches=0",
        "loader.batch_size=1", "loader.train_batches_per_epoch=1", f"paths.runs_dir={tmp_path}")  # fmt: skip
    (ckpt,) = tmp_path.glob("*/checkpoints/last.ckpt")
    tables = {}
    for layout in ("cpu", "ddp"):
        out = tmp_path / f"eval-{layout}"
        run("evaluate.py", "solver=mt3", f"checkpoint={ckpt}", *data, f"trainer={layout}",
            "loader.eval_batch_size=1", f"hydra.run.dir={out}", f"run.dir={out}")  # fmt: skip
        tables[layout] = {
            name: json.loads((out / f"{name}.json").read_text())["rows"]
            for name in ("mt3_table2", "mt3_table3", "mt3_tracks")
        }
    assert [t["key"] for t in tables["ddp"]["mt3_tracks"]] == [
        "toy-test-000",
        "toy-test-001",
        "toy-test-002",
    ]
    assert tables["ddp"] == tables["cpu"]
