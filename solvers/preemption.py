"""Fault tolerance: atomic checkpoint files, and one shutdown path for every stop signal.

Who owns what (see README, "Preemption, requeue and resume"):

* **submitit owns requeue.** Jobs go through submitit (``hydra/launcher=slurm``), which asks SLURM
  for ``--signal=USR2@<signal_delay_s>`` before the time limit and installs a handler that, on
  rank 0, re-pickles the job and runs ``scontrol requeue`` (counting timeouts against
  ``max_num_timeout``). Lightning's own SLURM auto-requeue is switched off
  (``SLURMEnvironment(auto_requeue=False)``, see :func:`cluster_plugins`).
* **The training loop owns the checkpoint.** :class:`LastCheckpoint` takes the stop signals
  (SIGTERM and the requeue signal, ``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default) over for the
  duration of ``fit``, from submitit and from Lightning: its handler only notes the signal. At the
  next training step the ranks agree on it (one all-reduce, so a signal that reached one rank
  stops them all), save ``last.ckpt`` together (rank 0 writes it), and every process exits 0.
  When the requeue signal reached any rank and the job runs under submitit, rank 0 first hands
  it to submitit's handler, once, which requeues the job. SIGTERM (``scancel``, ``scontrol
  requeue``, SLURM's own preemption) never requeues: whoever sent it decides that.
* ``scancel`` signals every process of a job: loader workers ignore the stop signals unless
  their parent sends them (``data.worker_signals``), and logging to W&B stops at SIGTERM, on
  which W&B's service process exits.

Checkpoint files are written by :class:`AtomicCheckpointIO`: into a temporary file next to the
target, flushed and fsynced, then renamed over it, so a ``kill -9`` at any moment leaves either
the previous complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import WandbLogger
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


def requeued_since_start() -> bool:
    """Whether SLURM has requeued this job since this run of it started (an admin's ``scontrol
    requeue``, or a requeue that came first): ``scontrol show job`` counts more restarts than
    ``SLURM_RESTART_COUNT``, while the job is still COMPLETING or PENDING again."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return False
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    restarts = re.search(r"\bRestarts=(\d+)", out)
    started_as = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    return restarts is not None and int(restarts.group(1)) > started_as


def requeue_once(handler: Callable[[int, Any], Any], signum: int) -> None:
    """Rank 0: let submitit's ``handler`` re-pickle and requeue the job (it exits the process).

    When its ``scontrol requeue`` fails because the job is already being requeued (a second
    signal, an admin's ``scontrol requeue``), the job exits as requeued: an exception here would
    become the job's result, and the sweep would report a failure for a job that comes back.
    """
    try:
        handler(signum, None)
    except (OSError, subprocess.SubprocessError) as err:
        if not requeued_since_start():
            raise
        log.warning("the job is already requeued (%s): exiting without a result", err)


class LastCheckpoint(Checkpoint):
    """The one writer of ``last.ckpt`` (``path``): the state every resume starts from.

    It saves (between two training batches) every ``every_n_train_steps`` optimiser steps, every
    ``every_minutes`` of wall-clock time (rank 0's clock decides for all ranks), on a stop signal,
    and at the end of training. One callback instead of Lightning's ModelCheckpoint because
    ModelCheckpoint takes steps or time but not both (two of them would both write ``last.ckpt``),
    and it skips its end-of-training save when it saved earlier in the run (``last.ckpt`` would lag
    the last steps).

    Stop signals: SIGTERM and ``signum`` (the requeue signal, :func:`preemption_signal` by
    default). From ``setup`` of ``fit`` on their handler only notes them; at the start of the next
    training batch the ranks agree (one all-reduce of three numbers per batch: SIGTERM, the
    requeue signal, time to save), all save together, rank 0 hands a requeue to submitit's handler
    when there was one (:func:`requeue_once`), and every process exits with status 0.
    Being a ``Checkpoint`` callback, it runs after the other callbacks, and Lightning adds no
    default ModelCheckpoint next to it.
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
        self.requeue_signal = signal.Signals(signum) if signum is not None else preemption_signal()
        self.signals = tuple(dict.fromkeys((signal.SIGTERM, self.requeue_signal)))
        self._received: set[int] = set()
        self._outer: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None
        self._saved_step: int | None = None
        self._saved_time = time.monotonic()

    # -- signal plumbing -------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._trainer, self._received = trainer, set()
            self._install()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = None
        self._restore()

    def _install(self) -> None:
        """Note the stop signals (main thread only); the handlers found first are kept for later."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._outer.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._on_signal)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._outer.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._outer = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Runs between two bytecodes of the training loop: only note it; the loop acts at a safe point.
        self._received.add(signum)
        if signum == signal.SIGTERM and self._trainer is not None:
            # W&B's service process gets SIGTERM too (SLURM signals every process of the job) and
            # exits: the next W&B call would crash the run before the loop saves.
            loggers = self._trainer.loggers
            self._trainer.loggers = [lg for lg in loggers if not isinstance(lg, WandbLogger)]

    def _stop(self, trainer: L.Trainer, requeue: bool) -> NoReturn:
        """After the save: rank 0 requeues when asked and submitit's handler is there; all exit 0.
        The stop signals stay noted-only until the process ends: a second signal changes nothing."""
        handler, self._outer = self._outer.get(self.requeue_signal), {}
        if requeue and trainer.is_global_zero and callable(handler):
            requeue_once(handler, self.requeue_signal)
        raise SystemExit(0)

    # -- saving ------------------------------------------------------------------------------
    def save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` now, with the optimiser and loop state (all ranks call this together)."""
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step, self._saved_time = trainer.global_step, time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()  # again: Lightning put its own SIGTERM handler in place just before
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
            [*(float(s in self._received) for s in self.signals), float(timed)],
            device=trainer.strategy.root_device,
        )
        *received, timed = (
            bool(v > 0) for v in trainer.strategy.reduce(flags, reduce_op="sum").tolist()
        )
        if any(received):
            names = [s.name for s, r in zip(self.signals, received, strict=True) if r]
            rank_zero_info(
                f"{', '.join(names)} received: saving {self.path} at step {trainer.global_step}"
            )
            self.save(trainer)
            self._stop(trainer, requeue=received[self.signals.index(self.requeue_signal)])
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
        # Lightning's own SIGTERM handler is in place between its start-up and on_train_start.
        if isinstance(exception, SIGTERMException) and trainer.global_step != self._saved_step:
            rank_zero_info(f"SIGTERM: saving {self.path} at step {trainer.global_step}")
            self.save(trainer)
        self._restore()
