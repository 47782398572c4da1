"""Fault tolerance without a scheduler: kill -9 and resume, signals, atomic checkpoint files,
and when last.ckpt is written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from solvers.preemption import (
    PARTIAL_MARK,
    AtomicCheckpointIO,
    LastCheckpoint,
    remove_partial_checkpoints,
)
from tests.fixtures.callbacks import read_reports

REPO = Path(__file__).resolve().parents[1]
TOY_CONF = REPO / "tests" / "fixtures" / "conf"


def train_command(dataset: Path, tmp: Path, *overrides: str) -> list[str]:
    """A slow toy run in ``tmp/runs``; it writes its step to ``tmp/progress`` after every batch and
    a report per start to ``tmp/reports/rank0.jsonl``."""
    return [
        sys.executable,
        "train.py",
        f"hydra.searchpath=[file://{TOY_CONF}]",
        "solver=toy",
        f"dataset.root={dataset}",
        "logger=csv",
        f"paths.runs_dir={tmp / 'runs'}",
        "trainer=debug",
        "loader.num_workers=0",
        "loader.batch_size=2",
        "loader.train_batches_per_epoch=5",
        "+callbacks.report._target_=tests.fixtures.callbacks.RankReport",
        f"+callbacks.report.folder={tmp / 'reports'}",
        "+callbacks.slow._target_=tests.fixtures.callbacks.Slowdown",
        "+callbacks.slow.seconds=0.2",
        f"+callbacks.slow.progress={tmp / 'progress'}",
        *overrides,
    ]


def start(cmd: list[str], tmp: Path) -> subprocess.Popen:
    with open(
        tmp / "stderr.log", "w"
    ) as log:  # a file, not a pipe: a chatty run never blocks on it
        return subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )


def wait_for_step(tmp: Path, step: int, process: subprocess.Popen, timeout: float = 240) -> int:
    """Wait until the run has trained ``step`` steps; returns the step reached."""
    deadline = time.monotonic() + timeout
    progress = tmp / "progress"
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp / "stderr.log").read_text()[-3000:]
        text = progress.read_text() if progress.exists() else ""
        if text and int(text) >= step:
            return int(text)
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(
        f"the run did not reach step {step} in {timeout} s: {(tmp / 'stderr.log').read_text()[-2000:]}"
    )


def start_steps(tmp: Path) -> list[int]:
    """The step each start of the run began from, in start order."""
    return [report["start_step"] for report in read_reports(tmp / "reports")]


def assert_complete_checkpoints(folder: Path) -> None:
    for path in folder.glob("*.ckpt"):
        torch.load(path, map_location="cpu", weights_only=True)  # raises on a truncated file


def test_kill_9_then_the_same_command_resumes(toy_dataset: Path, tmp_path: Path) -> None:
    cmd = train_command(
        toy_dataset, tmp_path, "trainer.max_steps=24", "checkpoint.every_n_train_steps=3"
    )
    process = start(cmd, tmp_path)
    reached = wait_for_step(tmp_path, 8, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    (run_dir,) = (tmp_path / "runs").iterdir()
    checkpoints = run_dir / "checkpoints"
    assert_complete_checkpoints(checkpoints)
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"]
    assert saved % 3 == 0 and 6 <= saved <= reached + 1

    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_dir.name]
    assert start_steps(tmp_path) == [0, saved]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 24
    assert not list(checkpoints.glob(f".*{PARTIAL_MARK}*"))
    assert_complete_checkpoints(checkpoints)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_a_signal_saves_last_ckpt_before_the_run_stops(
    toy_dataset: Path, tmp_path: Path, signum: int
) -> None:
    """SIGTERM (scancel) and the preemption signal outside submitit: save, then stop."""
    cmd = train_command(
        toy_dataset, tmp_path, "trainer.max_steps=200", "checkpoint.every_n_train_steps=1000"
    )
    process = start(cmd, tmp_path)
    reached = wait_for_step(tmp_path, 4, process)
    process.send_signal(signum)
    process.wait(timeout=120)
    stderr = (tmp_path / "stderr.log").read_text()
    # SIGTERM: Lightning stops with SystemExit (status 0); USR2 without submitit: killed by the signal.
    assert process.returncode == (0 if signum == signal.SIGTERM else -signum), stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert reached <= saved <= reached + 2 < 200, stderr[-2000:]
    assert f"{signal.Signals(signum).name}" in stderr and "saving" in stderr


WRITER = """
import sys, torch
from pathlib import Path
from solvers.preemption import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), Path(sys.argv[1])
for version in range(1, 10_000):
    io.save_checkpoint({"version": version, "weights": torch.full((4_000_000,), float(version))}, path)
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    for _ in range(2):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO)
        deadline = time.monotonic() + 120
        while not (path.exists() and list(tmp_path.glob(f".*{PARTIAL_MARK}*"))):  # caught mid-write
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.005)
        writer.kill()
        writer.wait()
        state = torch.load(path, weights_only=True)
        assert torch.equal(state["weights"], torch.full((4_000_000,), float(state["version"])))
        remove_partial_checkpoints(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class CountingIO(AtomicCheckpointIO):
    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []

    def save_checkpoint(
        self, checkpoint: dict, path: object, storage_options: object = None
    ) -> None:
        self.steps.append(checkpoint["global_step"])
        super().save_checkpoint(checkpoint, path, storage_options)


def fit_tiny(tmp_path: Path, max_steps: int, **kwargs: object) -> list[int]:
    io = CountingIO()
    trainer = L.Trainer(
        max_steps=max_steps,
        callbacks=[LastCheckpoint(tmp_path / "last.ckpt", **kwargs)],
        plugins=[io],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=4
    )
    trainer.fit(Tiny(), data)
    return io.steps


def test_last_ckpt_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    # Lightning's ModelCheckpoint would stop at step 6 here: it skips the end-of-training save.
    assert fit_tiny(tmp_path, 7, every_n_train_steps=3) == [3, 6, 7]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_last_ckpt_by_wall_clock_time(tmp_path: Path) -> None:
    # every_minutes=0 would disable it; 1e-9 minutes: due at every batch, never twice per step.
    assert fit_tiny(tmp_path, 4, every_minutes=1e-9) == [1, 2, 3, 4]
