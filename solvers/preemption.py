"""Fault tolerance: atomic checkpoint files, and a checkpoint on the preemption signal before requeue.

Who owns what (see README, "Running on a cluster"):

* **submitit owns requeue.** Jobs go through submitit (``hydra/launcher=slurm``), which asks SLURM
  for ``--signal=USR2@<signal_delay_s>`` before the time limit and installs a handler that, on
  rank 0, re-pickles the job and runs ``scontrol requeue`` (counting timeouts against
  ``max_num_timeout``). Lightning's own SLURM auto-requeue is switched off
  (``SLURMEnvironment(auto_requeue=False)``, see :func:`cluster_plugins`).
* **The training loop owns the checkpoint.** :class:`LastCheckpoint` takes the signal over
  from submitit for the duration of ``fit``: the handler only sets a flag; at the end of the
  current training batch the ranks agree on it (one all-reduce), all of them save ``last.ckpt``
  together, and then the signal is handed to the handler that was there before (submitit's),
  which requeues and exits. The requeued job reruns the same command, so it lands in the same
  run directory, resumes from ``last.ckpt`` and keeps the W&B run id (the run name).
* SIGTERM (scancel, or SLURM's own preemption with ``PreemptMode=REQUEUE``) is turned into an
  exception by Lightning at a point where the ranks are in step; :class:`LastCheckpoint`
  then saves ``last.ckpt`` too. It does not requeue: whoever sent SIGTERM decides that.

Checkpoint files are written by :class:`AtomicCheckpointIO`: into a temporary file next to the
target, flushed and fsynced, then renamed over it, so a ``kill -9`` at any moment leaves either
the previous complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``.<name>.partial-<pid>`` in the target's folder, fsync, then ``os.replace``.

    Lightning's own writer goes through an fsspec transaction whose temporary file lives in the
    system temp folder: when that is another filesystem than the run directory (``/tmp`` vs a
    shared cluster filesystem) the final move is a copy, which a kill can cut in half.
    Remote paths (``s3://`` ...) keep Lightning's writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, Path(path))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that ``path`` is always either absent, the old file or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.name}{PARTIAL_MARK}{os.getpid()}"
    try:
        with open(partial, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_partial_checkpoints(folder: Path) -> list[Path]:
    """Delete temporary files left by a writer that was killed mid-write (call before training)."""
    removed = []
    for partial in Path(folder).glob(f".*{PARTIAL_MARK}*"):
        partial.unlink(missing_ok=True)
        removed.append(partial)
    return removed


def preemption_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send before the time limit (``SUBMITIT_PREEMPT_SIGNAL``, USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


class SubmititLocalEnvironment(ClusterEnvironment):
    """The ranks of a ``hydra/launcher=local`` job: submitit's local executor starts one process
    per task (``tasks_per_node = trainer.devices``), like ``srun`` does under SLURM, so Lightning
    must not start its own (it would re-run ``python -m submitit.core._submit`` with Hydra
    arguments)."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        # The same for all tasks of a job (the job id is the controller's pid), different across jobs.
        return int(
            os.environ.get("MASTER_PORT")
            or 20000 + int(os.environ["SUBMITIT_LOCAL_JOB_ID"]) % 20000
        )

    @staticmethod
    def detect() -> bool:
        return (
            os.environ.get("SUBMITIT_EXECUTOR") == "local"
            and int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1
        )

    def world_size(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_NTASKS"])

    def set_world_size(self, size: int) -> None:
        pass

    def global_rank(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_GLOBALID"])

    def set_global_rank(self, rank: int) -> None:
        pass

    def local_rank(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_LOCALID"])

    def node_rank(self) -> int:
        return 0


def cluster_plugins() -> list:
    """Inside a SLURM job: Lightning reads the SLURM layout but leaves requeue to submitit.
    Inside a multi-task ``hydra/launcher=local`` job: the ranks submitit started."""
    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    if SubmititLocalEnvironment.detect():
        return [SubmititLocalEnvironment()]
    return []


class LastCheckpoint(Checkpoint):
    """The one writer of ``last.ckpt`` (``path``): the state every resume starts from.

    It saves (between two training batches) every ``every_n_train_steps`` optimiser steps, every ``every_minutes`` of wall-clock
    time (rank 0's clock decides for all ranks), when the preemption signal arrives (save, then let
    the previous owner of the signal act: submitit requeues), on SIGTERM (save), and at the end of
    training. One callback instead of Lightning's ModelCheckpoint because ModelCheckpoint takes
    steps or time but not both (two of them would both write ``last.ckpt``), and it skips its
    end-of-training save when it saved earlier in the run (``last.ckpt`` would lag the last steps).

    Per training batch this costs one all-reduce of two numbers (the ranks must agree to stop).
    Being a ``Checkpoint`` callback, it runs after the other callbacks, and Lightning adds no
    default ModelCheckpoint next to it.
    ``signum`` defaults to :func:`preemption_signal`. Without a previous Python handler (a run
    outside submitit) the signal's default action follows the save (USR1/USR2 terminate).
    """

    def __init__(
        self,
        path: str | Path,
        every_n_train_steps: int | None = None,
        every_minutes: float | None = None,
        signum: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_seconds = 60.0 * every_minutes if every_minutes else 0.0
        self.signum = signal.Signals(signum) if signum is not None else preemption_signal()
        self._requested = False
        self._previous: Any = None
        self._installed = False
        self._saved_step: int | None = None
        self._saved_time = time.monotonic()

    # -- signal plumbing -------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(self.signum)
        if previous is signal.SIG_IGN:
            return
        self._previous, self._requested = previous, False
        signal.signal(self.signum, self._on_signal)
        self._installed = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(
                self.signum, self._previous if self._previous is not None else signal.SIG_DFL
            )
        self._installed = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Runs between two bytecodes of the training loop: only note it; the loop acts at a safe point.
        self._requested = True

    def _hand_over(self, trainer: L.Trainer) -> None:
        previous = self._previous
        self._restore()
        if callable(previous):
            previous(self.signum, None)  # submitit: rank 0 requeues the job and exits
        elif previous in (signal.SIG_DFL, None):
            os.kill(os.getpid(), self.signum)  # the default action: terminate
        # Still here (ranks > 0 under submitit): stop this rank too; the requeue restarts all of them.
        raise SystemExit(f"preempted at step {trainer.global_step}; {self.path} saved")

    # -- saving ------------------------------------------------------------------------------
    def save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` now, with the optimiser and loop state (all ranks call this together)."""
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step, self._saved_time = trainer.global_step, time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_step, self._saved_time = trainer.global_step, time.monotonic()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        # Decide between batches, at the start of the next one: by then Lightning has logged the
        # metrics of every completed step, so a resumed run's logs continue without a gap.
        timed = (
            trainer.is_global_zero
            and self.every_seconds > 0
            and (time.monotonic() - self._saved_time >= self.every_seconds)
        )
        flags = torch.tensor(
            [float(self._requested), float(timed)], device=trainer.strategy.root_device
        )
        preempted, timed = (
            bool(v > 0) for v in trainer.strategy.reduce(flags, reduce_op="sum").tolist()
        )
        if preempted:
            rank_zero_info(
                f"{self.signum.name} received: saving {self.path} at step {trainer.global_step}"
            )
            self.save(trainer)
            self._hand_over(trainer)
        stepped = self.every_n_train_steps > 0 and (
            trainer.global_step - (self._saved_step or 0) >= self.every_n_train_steps
        )
        if (timed or stepped) and trainer.global_step != self._saved_step:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self.save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException) and trainer.global_step != self._saved_step:
            rank_zero_info(
                f"SIGTERM: saving {self.path} at step {trainer.global_step} before exiting"
            )
            self.save(trainer)
