"""The data-wait timer of ``benchmarks/data_throughput.py --data-wait`` (issue 13): the loader's
``next()`` calls are timed through the wrapper and the share counts the waits inside the measured
steps only (a fake clock: no wall-clock assertion)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks import data_throughput
from benchmarks.data_throughput import DataWaitTimer, _TimedLoader
from data.streams import EpochLoader


def test_timer_wraps_the_epoch_loader_and_times_each_batch(tmp_path: Path) -> None:
    batches = [{"i": torch.tensor(i)} for i in range(3)]
    epochs = EpochLoader(DataLoader(batches, batch_size=None), 3, "toy")
    timer = DataWaitTimer(str(tmp_path / "wait.json"))
    timer.on_train_start(SimpleNamespace(train_dataloader=epochs), None)
    assert isinstance(epochs.loader, _TimedLoader) and epochs.stream is batches
    assert [int(b["i"]) for b in epochs] == [0, 1, 2]
    assert len(timer.waits) == 3 and all(seconds >= 0 for _, seconds in timer.waits)
    with pytest.raises(TypeError, match="EpochLoader"):
        timer.on_train_start(SimpleNamespace(train_dataloader=batches), None)


def test_share_counts_waits_within_the_measured_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timer = DataWaitTimer(str(tmp_path / "wait.json"), warmup=2)
    # batch ends at t = 1, 2, 4, 6, 8; the first two batches are warm-up: steps span t = 2 .. 8
    timer.ends = [1.0, 2.0, 4.0, 6.0, 8.0]
    # waits start before each batch; the first (t=0) and second (t=1.5) precede the span
    timer.waits = [(0.0, 0.9), (1.5, 0.4), (2.0, 0.1), (4.0, 0.2), (6.0, 0.3)]
    timer.on_train_end(SimpleNamespace(is_global_zero=True), None)
    report = json.loads((tmp_path / "wait.json").read_text())
    assert report["batches"] == 3 and report["step_s"] == 6.0
    assert report["wait_s"] == pytest.approx(0.6) and report["share"] == pytest.approx(0.1)
    assert report["first_wait_s"] == 0.9
    assert data_throughput.WARMUP >= 1
