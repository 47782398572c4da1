"""Loader workers and stop signals: ``scancel`` sends SIGTERM (or the preemption signal) to every
process of a job, loader workers included. A worker that died of it first crashed the run before
the training loop could save, so workers ignore these signals from anyone but their parent; the
parent still ends them (DataLoader shutdown, ``multiprocessing``'s exit, which joins them)."""

from __future__ import annotations

import os
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn``: block the stop signals in this worker and serve them on a thread that
    exits the worker when its parent sent one and drops the others."""
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # threads started later inherit it
    threading.Thread(target=_obey_parent_only, args=(parent,), daemon=True).start()


def _obey_parent_only(parent: int) -> None:
    while True:
        if signal.sigwaitinfo(STOP_SIGNALS).si_pid == parent:
            os._exit(0)
