"""Every stop signal ends a run the same way, whichever processes it reaches.

SIGTERM (a plain ``scancel``, ``scontrol requeue``) and the preemption signal (USR2 outside
submitit) sent to one rank, to every rank, or to every process of the job (ranks and their
loader workers, what ``scancel`` does), with 0 or 2 loader workers and 1 or 2 processes: the run
saves ``last.ckpt`` at the next step boundary, every process exits 0, and the same command
resumes from the saved step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data.worker_signals import STOP_SIGNALS, ignore_stop_signals
from tests.fixtures.callbacks import read_reports
from tests.test_fault_tolerance import wait_for_step

REPO = Path(__file__).resolve().parents[1]
TOY_CONF = REPO / "tests" / "fixtures" / "conf"
STOP_TIMEOUT_S = 60.0  # from the signal until every process of the run has exited

# (signal, processes, loader workers, who gets the signal); the rest run with `make test-all`.
FAST = {(signal.SIGTERM, 2, 0, "rank 1")}
CASES = [
    (signum, processes, workers, target)
    for signum in (signal.SIGTERM, signal.SIGUSR2)
    for processes in (1, 2)
    for workers in (0, 2)
    for target in (("rank 1",) if processes == 2 else ()) + ("all ranks", "every process")
]


def command(dataset: Path, tmp: Path, processes: int, workers: int, max_steps: int) -> list[str]:
    """A slowed-down toy run in ``tmp/runs`` without validation; rank 0 writes its step to
    ``tmp/progress`` after every batch, every rank reports its pid per start in ``tmp/reports``."""
    return [
        sys.executable,
        "train.py",
        f"hydra.searchpath=[file://{TOY_CONF}]",
        "solver=toy",
        f"dataset.root={dataset}",
        "logger=csv",
        f"paths.runs_dir={tmp / 'runs'}",
        "trainer=ddp" if processes == 2 else "trainer=cpu",
        f"trainer.max_steps={max_steps}",
        "+trainer.limit_val_batches=0",
        f"loader.num_workers={workers}",
        "loader.batch_size=2",
        "loader.train_batches_per_epoch=5",
        "checkpoint.every_n_train_steps=1000",
        "+callbacks.report._target_=tests.fixtures.callbacks.RankReport",
        f"+callbacks.report.folder={tmp / 'reports'}",
        "+callbacks.slow._target_=tests.fixtures.callbacks.Slowdown",
        "+callbacks.slow.seconds=0.2",
        f"+callbacks.slow.progress={tmp / 'progress'}",
    ]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def send(process: subprocess.Popen, tmp: Path, signum: int, processes: int, target: str) -> None:
    """``target``: "rank 1", "all ranks" (each rank's main process) or "every process" (the
    process group: ranks and loader workers)."""
    if target == "every process":
        os.killpg(process.pid, signum)
        return
    ranks = [1] if target == "rank 1" else range(processes)
    for rank in ranks:
        os.kill(read_reports(tmp / "reports", rank)[-1]["pid"], signum)


def wait_for_exit(process: subprocess.Popen, tmp: Path) -> None:
    """Every process of the run exits within STOP_TIMEOUT_S; a hang is killed and reported."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while (process.poll() is None or group_members(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = group_members(process.pid)
    if process.poll() is None or left:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(
            f"still running {STOP_TIMEOUT_S:.0f} s after the signal (pids {left}): "
            f"{(tmp / 'stderr.log').read_text()[-3000:]}"
        )


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "signum,processes,workers,target",
    [pytest.param(*case, marks=() if case in FAST else pytest.mark.slow) for case in CASES],
    ids=[f"{s.name}-{p}proc-{w}workers-{t.replace(' ', '_')}" for s, p, w, t in CASES],
)
def test_a_stop_signal_saves_and_the_same_command_resumes(
    toy_dataset: Path,
    tmp_path: Path,
    signum: signal.Signals,
    processes: int,
    workers: int,
    target: str,
) -> None:
    cmd = command(toy_dataset, tmp_path, processes, workers, max_steps=500)
    with open(tmp_path / "stderr.log", "w") as log:  # a file, not a pipe: never blocks the run
        process = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
    reached = wait_for_step(tmp_path, 3, process)
    send(process, tmp_path, signum, processes, target)
    wait_for_exit(process, tmp_path)
    stderr = (tmp_path / "stderr.log").read_text()
    assert process.returncode == 0, stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert reached <= saved <= reached + 3, stderr[-3000:]
    assert f"{signum.name} received: saving" in stderr

    resumed = command(toy_dataset, tmp_path, processes, workers, max_steps=saved + 2)
    result = subprocess.run(resumed, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["start_step"] for r in read_reports(tmp_path / "reports")] == [0, saved]
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == saved + 2


class Endless(torch.utils.data.IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(2)


def test_loader_workers_ignore_stop_signals_from_anyone_but_their_parent() -> None:
    loader = torch.utils.data.DataLoader(
        Endless(), batch_size=None, num_workers=2, worker_init_fn=ignore_stop_signals
    )
    iterator = iter(loader)
    next(iterator), next(iterator)  # one batch from each worker: both have run their init
    workers = iterator._workers
    for signum in STOP_SIGNALS:  # from another process, like scancel's
        pids = [str(w.pid) for w in workers]
        subprocess.run(["kill", f"-{signum.name[3:]}", *pids], check=True)
    time.sleep(1)
    assert all(w.is_alive() for w in workers)
    next(iterator)
    os.kill(workers[0].pid, signal.SIGTERM)  # from the parent: the worker ends
    workers[0].join(timeout=30)
    assert workers[0].exitcode == 0
    del iterator


CRASH = """
import torch
from data.worker_signals import ignore_stop_signals
from tests.test_signals import Endless
loader = torch.utils.data.DataLoader(
    Endless(), batch_size=None, num_workers=2, worker_init_fn=ignore_stop_signals
)
iterator = iter(loader)
next(iterator)
raise RuntimeError("a crash that leaves the loader iterator alive")
"""


def test_a_crash_with_live_loader_workers_still_exits() -> None:
    """At exit multiprocessing terminates the workers, then joins them: they obey their parent."""
    result = subprocess.run(
        [sys.executable, "-c", CRASH], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and "a crash that leaves" in result.stderr
