"""Fault tolerance without a scheduler: kill -9 and resume, atomic checkpoint files, when
last.ckpt is written, and requeue bookkeeping under duplicate signals (stop signals in a real run:
tests/test_signals.py)."""

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


def tiny_trainer(
    tmp_path: Path, max_steps: int, io: CountingIO, *callbacks: L.Callback, **kwargs: object
) -> L.Trainer:
    """A Trainer whose LastCheckpoint(``kwargs``) writes ``tmp_path/last.ckpt`` through ``io``."""
    return L.Trainer(
        max_steps=max_steps,
        callbacks=[LastCheckpoint(tmp_path / "last.ckpt", **kwargs), *callbacks],
        plugins=[io],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def tiny_data() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=4
    )


def fit_tiny(tmp_path: Path, max_steps: int, **kwargs: object) -> list[int]:
    io = CountingIO()
    tiny_trainer(tmp_path, max_steps, io, **kwargs).fit(Tiny(), tiny_data())
    return io.steps


def test_last_ckpt_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    # Lightning's ModelCheckpoint would stop at step 6 here: it skips the end-of-training save.
    assert fit_tiny(tmp_path, 7, every_n_train_steps=3) == [3, 6, 7]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_last_ckpt_by_wall_clock_time(tmp_path: Path) -> None:
    # every_minutes=0 would disable it; 1e-9 minutes: due at every batch, never twice per step.
    assert fit_tiny(tmp_path, 4, every_minutes=1e-9) == [1, 2, 3, 4]


class SignalsAt(L.Callback):
    """Sends ``signals`` to this process, one after the other, at the end of step ``step``."""

    def __init__(self, step: int, *signals: signal.Signals) -> None:
        self.step, self.signals = step, signals

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            for signum in self.signals:
                os.kill(os.getpid(), signum)


USR2, TERM = signal.SIGUSR2, signal.SIGTERM


@pytest.mark.parametrize(
    "requeued_by_slurm,signals",
    [(True, (USR2, USR2)), (True, (USR2, TERM, USR2)), (False, (USR2, TERM, USR2))],
    ids=["requeued-USR2x2", "requeued-USR2+TERM", "not_requeued-USR2+TERM"],
)
def test_duplicate_signals_requeue_once_and_a_failed_requeue_of_a_requeued_job_is_no_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    requeued_by_slurm: bool,
    signals: tuple[signal.Signals, ...],
) -> None:
    """USR2 twice, with or without the SIGTERM of an admin's ``scontrol requeue``: one save, submitit's
    handler runs once, and its ``scontrol requeue`` failing (SLURM requeues the job already) ends
    the process as requeued, with no error that would become the job's result. When SLURM did
    not requeue the job (``Restarts`` not above ``SLURM_RESTART_COUNT``), the failure stays."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    restarts = 1 if requeued_by_slurm else 0
    scontrol.write_text(f"#!/bin/sh\necho 'JobId=7 JobState=COMPLETING Restarts={restarts}'\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    calls = []

    def submitit_handler(signum: int, frame: object) -> None:
        calls.append(signum)
        raise subprocess.CalledProcessError(1, ["scontrol", "requeue", "7"])

    handlers = {s: signal.getsignal(s) for s in (TERM, USR2)}
    signal.signal(USR2, submitit_handler)
    io = CountingIO()
    trainer = tiny_trainer(tmp_path, 50, io, SignalsAt(3, *signals), signum=USR2)
    try:
        with pytest.raises(
            SystemExit if requeued_by_slurm else subprocess.CalledProcessError
        ) as end:
            trainer.fit(Tiny(), tiny_data())
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert calls == [USR2]
    assert io.steps == [3]
    if requeued_by_slurm:
        assert end.value.code == 0
