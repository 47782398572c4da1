"""Pipeline decode throughput against raw ``soundfile`` decoding of the same shards, in one run;
with ``--data-wait``, the share of the training step spent waiting on the loader.

    python benchmarks/data_throughput.py [--root datasets/synth] [--split train] [--repeats 3]
        [--data-wait compression_tiny,mt3_tiny,musicgen_melody_tiny] [--steps 40]

Without ``--root`` (or if it is not prepared) a toy dataset of 20-second samples is written to a
temporary folder. Prints a table and one JSON line; ``ratio`` is pipeline speed / raw speed for
one reader in the process, ``ratio_1worker`` for one loader worker process (its start-up
included) and ``ratio_1worker_steady`` for that worker once its first batch arrived (target >= 0.8).
``ratio_1worker_steady_cpu`` compares audio seconds per CPU second instead, the worker process's
(all its threads, from ``/proc``) against raw decoding's: the cost per worker, which other jobs
on the machine do not change as they do wall times.

``--data-wait`` trains each preset for ``--steps`` batches on ``--root`` (``train.py``, the
preset's own loader settings, no validation) with :class:`DataWaitTimer`: the time the training
loop spends blocked in the loader's ``next()`` over the whole step time, after ``WARMUP`` batches
(worker start-up), target < 5 %. ``musicgen_melody_tiny`` uses the ``compression_tiny`` run of
the same invocation as its codec (run first).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import soundfile as sf
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from data.decode import AUDIO_EXTENSIONS, SampleSpec
from data.shardlist import split_shards
from data.streams import EpochLoader, EvalStream

REPO = Path(__file__).resolve().parents[1]
WARMUP = 5  # batches left out of the data-wait share: loader workers start and fill their queues


def raw_decode(shards: list[str]) -> tuple[int, float]:
    """Read each mix member out of the tars and decode it whole with soundfile."""
    samples, seconds = 0, 0.0
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                base = Path(member.name).name
                if base.split(".", 1)[-1] in AUDIO_EXTENSIONS:
                    data, rate = sf.read(
                        io.BytesIO(tar.extractfile(member).read()), dtype="float32"
                    )
                    samples, seconds = samples + 1, seconds + len(data) / rate
    return samples, seconds


def pipeline_decode(shards: list[str], rate: int, channels: int, workers: int) -> tuple[int, float]:
    spec = SampleSpec(rate, channels, None, ("audio",), "none")
    loader = DataLoader(
        EvalStream(shards, spec, batch_size=1), batch_size=None, num_workers=workers
    )
    samples, seconds = 0, 0.0
    for batch in loader:
        samples, seconds = samples + 1, seconds + batch["audio"].shape[-1] / rate
    return samples, seconds


def process_cpu_s(pid: int) -> float:
    """CPU seconds used so far by the live threads of process ``pid`` (Linux ``schedstat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def steady_decode(
    shards: list[str], rate: int, channels: int, repeats: int
) -> tuple[int, float, float, float]:
    """One loader worker after its start-up: samples, audio seconds, and the best wall time and
    best CPU time of the worker process (all its threads: decoding, pickling, sending) over
    ``repeats`` runs, each from the first batch's arrival to the last one's."""
    spec = SampleSpec(rate, channels, None, ("audio",), "none")
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        loader = DataLoader(EvalStream(shards, spec, batch_size=1), batch_size=None, num_workers=1)
        iterator = iter(loader)
        pid = iterator._workers[0].pid  # the worker process (a private attribute of PyTorch's)
        samples, seconds, start, cpu = -1, 0.0, 0.0, 0.0
        wall = worker_cpu = float("inf")  # when only one batch comes
        for batch in iterator:
            if samples < 0:
                samples, start, cpu = 0, time.perf_counter(), process_cpu_s(pid)
                continue
            samples, seconds = samples + 1, seconds + batch["audio"].shape[-1] / rate
            wall, worker_cpu = time.perf_counter() - start, process_cpu_s(pid) - cpu
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, worker_cpu)
    return samples, seconds, best_wall, best_cpu


class _TimedLoader:
    """A DataLoader whose iterator records ``(start, seconds)`` of each ``next()`` in ``waits``."""

    def __init__(self, loader: DataLoader, waits: list[tuple[float, float]]) -> None:
        self.loader, self.dataset, self.waits = loader, loader.dataset, waits

    def __iter__(self) -> Iterator[dict]:
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            batch = next(iterator, None)
            if batch is None:
                return
            self.waits.append((start, time.perf_counter() - start))
            yield batch


class DataWaitTimer(L.Callback):
    """Times the training loop's waits on the train loader against its steps and writes
    ``{"batches", "wait_s", "step_s", "share", "first_wait_s"}`` to ``path`` when training ends
    (benchmark only: ``+callbacks.data_wait._target_=benchmarks.data_throughput.DataWaitTimer``)."""

    def __init__(self, path: str, warmup: int = WARMUP) -> None:
        self.path, self.warmup = Path(path), warmup
        self.waits: list[tuple[float, float]] = []
        self.ends: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, EpochLoader):
            raise TypeError(f"DataWaitTimer expects the DataModule's EpochLoader, got {loader!r}")
        loader.loader = _TimedLoader(loader.loader, self.waits)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.ends.append(time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or len(self.ends) <= self.warmup:
            return
        start, end = self.ends[self.warmup - 1], self.ends[-1]
        wait = sum(w for t, w in self.waits if start <= t < end)
        report = {
            "batches": len(self.ends) - self.warmup,
            "wait_s": round(wait, 4),
            "step_s": round(end - start, 3),
            "share": round(wait / (end - start), 4),
            "first_wait_s": round(self.waits[0][1], 3),
        }
        self.path.write_text(json.dumps(report))


def data_wait(root: Path, preset: str, steps: int, out: Path) -> dict:
    """Train ``preset`` for ``steps`` batches with :class:`DataWaitTimer`; its report."""
    report = out / f"{preset}.json"
    cmd = [
        sys.executable, "train.py", f"experiment={preset}", f"dataset.root={root}",
        "logger=csv", f"paths.runs_dir={out}", f"run.name={preset}",
        f"loader.train_batches_per_epoch={steps}", "trainer.max_epochs=1", f"trainer.max_steps={2 * steps}",
        "trainer.limit_val_batches=0",
        "+callbacks.data_wait._target_=benchmarks.data_throughput.DataWaitTimer",
        f"+callbacks.data_wait.path={report}",
    ]  # fmt: skip
    if preset.startswith("musicgen"):
        cmd.append(f"solver.module.codec_checkpoint={out}/compression_tiny/checkpoints/last.ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{preset} failed:\n{done.stderr[-3000:]}")
    return json.loads(report.read_text())


def timed(fn, repeats: int) -> tuple[int, float, float, float]:
    """Samples, audio seconds, and the best wall and CPU seconds of this process over
    ``repeats`` calls of ``fn``."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        samples, seconds = fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return samples, seconds, best, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="datasets/synth")
    parser.add_argument("--split", default="train")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--data-wait",
        default="",
        help="comma-separated presets to train with the data-wait timer (e.g. "
        "compression_tiny,mt3_tiny,musicgen_melody_tiny); none by default",
    )
    parser.add_argument("--steps", type=int, default=40, help="batches per --data-wait run")
    args = parser.parse_args()
    root = Path(args.root)
    if not (root / "index.json").exists():
        from tests.fixtures.toy_shards import write_toy_dataset

        root = write_toy_dataset(
            Path(tempfile.mkdtemp()) / "toy", {args.split: 24}, per_shard=8, seconds=20.0
        )
    shards = split_shards(root, args.split)
    with sf.SoundFile(io.BytesIO(_first_audio(shards[0]))) as f:
        rate, channels = f.samplerate, f.channels
    rows = [("raw soundfile", *timed(lambda: raw_decode(shards), args.repeats))]
    for workers in (0, 1, 2):
        label = "pipeline, in process" if workers == 0 else f"pipeline, {workers} worker(s)"
        run = timed(lambda w=workers: pipeline_decode(shards, rate, channels, w), args.repeats)
        rows.append((label, *run[:3], run[3] if workers == 0 else None))
    rows.append(("1 worker, after start-up", *steady_decode(shards, rate, channels, args.repeats)))
    print(
        f"{'reader':<24}{'samples':>9}{'audio s':>10}{'wall s':>9}{'audio s/s':>11}"
        f"{'samples/s':>11}{'CPU s':>8}{'audio s/CPU s':>15}"
    )
    for label, samples, seconds, wall, cpu in rows:
        per_cpu = f"{cpu:>8.3f}{seconds / cpu:>15.1f}" if cpu else ""
        print(
            f"{label:<24}{samples:>9}{seconds:>10.1f}{wall:>9.3f}{seconds / wall:>11.1f}"
            f"{samples / wall:>11.1f}{per_cpu}"
        )
    speeds = [seconds / wall for _, _, seconds, wall, _ in rows]
    raw_per_cpu, steady_per_cpu = (rows[i][2] / rows[i][4] for i in (0, 4))
    result = {
        "benchmark": "data_throughput",
        "root": str(root),
        "split": args.split,
        "sample_rate": rate,
        "raw_audio_s_per_s": round(speeds[0], 1),
        "pipeline_audio_s_per_s": round(speeds[1], 1),
        "pipeline_1worker_audio_s_per_s": round(speeds[2], 1),
        "pipeline_2workers_audio_s_per_s": round(speeds[3], 1),
        "pipeline_samples_per_s": round(rows[1][1] / rows[1][3], 2),
        "pipeline_1worker_steady_audio_s_per_s": round(speeds[4], 1),
        "ratio": round(speeds[1] / speeds[0], 3),
        "ratio_1worker": round(speeds[2] / speeds[0], 3),
        "ratio_1worker_steady": round(speeds[4] / speeds[0], 3),
        "ratio_1worker_steady_cpu": round(steady_per_cpu / raw_per_cpu, 3),
        "target_ratio": 0.8,
    }
    presets = [p for p in args.data_wait.split(",") if p]
    if any(p.startswith("musicgen") for p in presets):  # their codec comes from this run
        presets = ["compression_tiny", *(p for p in presets if p != "compression_tiny")]
    if presets:
        waits = {}
        with tempfile.TemporaryDirectory() as out:
            for preset in presets:
                waits[preset] = data_wait(root, preset, args.steps, Path(out))
        print(
            f"\n{'preset':<24}{'batches':>9}{'step s':>9}{'wait s':>9}{'wait share':>12}{'first wait s':>14}"
        )
        for preset, w in waits.items():
            print(
                f"{preset:<24}{w['batches']:>9}{w['step_s'] / w['batches']:>9.3f}"
                f"{w['wait_s'] / w['batches']:>9.4f}{w['share']:>12.2%}{w['first_wait_s']:>14.2f}"
            )
        result["data_wait_share"] = {preset: w["share"] for preset, w in waits.items()}
        result["data_wait_target"] = 0.05
    print(json.dumps(result))


def _first_audio(shard: str) -> bytes:
    with tarfile.open(shard) as tar:
        for member in tar:
            if Path(member.name).name.split(".", 1)[-1] in AUDIO_EXTENSIONS:
                return tar.extractfile(member).read()
    raise SystemExit(f"no audio in {shard}")


if __name__ == "__main__":
    main()
