"""Training throughput of 1 process against 2 DDP processes on this machine, through train.py.

    python benchmarks/scaling.py [--experiment compression_tiny] [--root datasets/synth]
                                 [--batch-size 4] [--batches 8] [--warmup 3] [--repeats 2]

All runs use the same per-process batch (weak scaling: 2 processes train 2x the samples per
step; gradients are all-reduced over gloo on CPU). Three layouts:

* 1 process, 1 thread: the baseline, the same compute per process as one DDP rank;
* 1 process, torch's default threads (one per core);
* 2 processes, 1 thread each (what Lightning sets for CPU DDP: cores / processes).

Timing starts after ``--warmup`` batches and excludes start-up and validation; the layouts
alternate and each keeps its best of ``--repeats``, which damps the noise of a shared machine.
Without ``--root`` (or if it is not prepared) a toy dataset is written to a temporary folder;
without the compression solver in the tree the toy solver of tests/fixtures is used. Prints a
table and one JSON line; ``speedup`` is samples/s over that of 1 process x 1 thread.

Result on the 2-core development machine (shared, load ~5), compression_tiny, batch 4, synth:
1 process x 1 thread 6.4 samples/s; 1 process x 2 threads 1.7 (intra-op threads oversubscribe a
loaded machine); 2 DDP processes x 1 thread 7.2 (speedup 1.13: two busy cores leave little room,
and every step all-reduces the gradients over gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere


class Throughput(L.Callback):
    """Rank 0 writes ``{"batches", "seconds", "samples"}`` for the training batches after the first
    ``warmup`` ones: samples = batches x batch size x world size."""

    def __init__(self, path: str, warmup: int = 3) -> None:
        self.path, self.warmup = Path(path), warmup
        self._seen, self._batches, self._samples = 0, 0, 0
        self._start: float | None = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._seen += 1
        if self._seen == self.warmup:
            self._start = time.perf_counter()
        elif self._start is not None:
            self._batches += 1
            self._samples += batch["audio"].shape[0] * trainer.world_size

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._start is not None:
            seconds = time.perf_counter() - self._start
            self.path.write_text(
                json.dumps({"batches": self._batches, "seconds": seconds, "samples": self._samples})
            )


def solver_overrides(experiment: str) -> tuple[list[str], int]:
    """Overrides that pick the solver, and the optimiser steps Lightning counts per batch."""
    if experiment == "toy" or not (REPO / "conf" / "experiment" / f"{experiment}.yaml").exists():
        return [
            f"hydra.searchpath=[file://{REPO / 'tests' / 'fixtures' / 'conf'}]",
            "solver=toy",
        ], 1
    steps_per_batch = 2 if experiment.startswith("compression") else 1  # generator + discriminator
    return [f"experiment={experiment}"], steps_per_batch


LAYOUTS = [(1, "1"), (1, "default"), (2, "1")]  # (processes, threads per process)


def run(processes: int, threads: str, args: argparse.Namespace, root: Path, out: Path) -> dict:
    solver, steps_per_batch = solver_overrides(args.experiment)
    result_path = out / f"throughput-{processes}.json"
    result_path.unlink(missing_ok=True)
    layout = ["trainer=cpu"] if processes == 1 else ["trainer=ddp", f"trainer.devices={processes}"]
    if processes > 1 and args.experiment.startswith("compression"):
        layout.append("trainer.strategy=ddp_find_unused_parameters_true")  # a GAN: two optimisers
    cmd = [
        sys.executable,
        "train.py",
        *solver,
        *layout,
        f"dataset.root={root}",
        "logger=csv",
        f"paths.runs_dir={out / 'runs'}",
        f"run.name=scaling-{processes}",
        "run.resume=false",
        f"trainer.max_steps={(args.batches + args.warmup) * steps_per_batch}",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1000",
        f"loader.batch_size={args.batch_size}",
        f"loader.num_workers={args.workers}",
        "loader.train_batches_per_epoch=100000",
        "checkpoint.every_n_train_steps=100000",
        "checkpoint.every_minutes=null",
        "+callbacks.throughput._target_=benchmarks.scaling.Throughput",
        f"+callbacks.throughput.path={result_path}",
        f"+callbacks.throughput.warmup={args.warmup}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"error: the {processes}-process run failed:\n{done.stderr[-3000:]}")
    result = json.loads(result_path.read_text())
    result.update(
        processes=processes, threads=threads, samples_per_s=result["samples"] / result["seconds"]
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--experiment", default="compression_tiny", help="an experiment preset, or `toy`"
    )
    parser.add_argument("--root", type=Path, default=REPO / "datasets" / "synth")
    parser.add_argument("--batch-size", type=int, default=4, help="per process")
    parser.add_argument("--batches", type=int, default=8, help="timed training batches")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if not (root / "index.json").exists():
            from tests.fixtures.toy_shards import write_toy_dataset

            root = write_toy_dataset(Path(tmp) / "toy", counts={"train": 12, "valid": 2, "test": 2})
        best: dict[tuple[int, str], dict] = {}
        for _ in range(args.repeats):
            for layout in LAYOUTS:
                r = run(*layout, args, root, Path(tmp))
                if layout not in best or r["samples_per_s"] > best[layout]["samples_per_s"]:
                    best[layout] = r
        results = [best[layout] for layout in LAYOUTS]

    base = results[0]["samples_per_s"]
    print(
        f"training throughput, {args.experiment}, batch {args.batch_size} per process, CPU, gloo, best of {args.repeats}"
    )
    print(f"({os.cpu_count()} cores; speedup against 1 process x 1 thread)")
    print(
        f"{'processes':>9} {'threads':>8} {'global batch':>12} {'batches':>7} {'seconds':>8} {'samples/s':>10} {'speedup':>8}"
    )
    for r in results:
        print(
            f"{r['processes']:>9} {r['threads']:>8} {args.batch_size * r['processes']:>12} {r['batches']:>7} "
            f"{r['seconds']:>8.2f} {r['samples_per_s']:>10.2f} {r['samples_per_s'] / base:>8.2f}"
        )
    print(
        json.dumps(
            {
                "benchmark": "scaling",
                "experiment": args.experiment,
                "dataset": str(args.root),
                "batch_size_per_process": args.batch_size,
                "cores": os.cpu_count(),
                "samples_per_s": {
                    f"{r['processes']}x{r['threads']}": round(r["samples_per_s"], 3)
                    for r in results
                },
                "speedup_2_processes": round(results[-1]["samples_per_s"] / base, 3),
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
