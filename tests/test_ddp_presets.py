"""Real presets under DDP and kill -9 (issue 13; the toy-solver versions are
tests/test_ddp_equivalence.py and tests/test_fault_tolerance.py).

* ``experiment=mt3_tiny`` on 2 processes (gloo, CPU, one loader worker each) for a few optimiser
  steps ends with the same parameters as 1 process with 2 loader workers accumulating 2
  micro-batches: the single process's readers 0 and 1 read what ranks 0 and 1 read, so every step
  sees the same samples and crops. The gradients are then (a + b) / 2 (gloo's sum, DDP's mean)
  against a / 2 + b / 2 (accumulation of halved losses): halving is exact in binary floating
  point, so with 2 ranks they are equal bit for bit (measured: 0.0 after 4 AdamW steps, and
  Adam's moments equal too). The tolerance, 1e-6 on parameters of order 0.1, leaves room for a
  sum in another order (more ranks, another reduction algorithm), about 1 ulp per gradient
  which Adam's normalisation can carry into an lr-1e-3 update.
* ``experiment=compression_tiny`` (manual optimisation: Lightning does not accumulate it) on 2
  processes with ``loader.global_batches=true`` (each rank reads the 1-process stream of global
  batches and trains on its half) for 4 batches (2 with the adversarial losses; gradients clipped
  to norm 1.0, which the generator's exceed: clipping acts on the reduced gradient) ends with the
  parameters, codebooks, balancer statistics and Adam moments of 1 process with the doubled
  batch, in float64 (``trainer.precision=64-true``). In float32 the two runs part by rounding
  alone: gradients are summed in another order (gloo adds the ranks' halves) and the untrained
  discriminator's gradients cancel to the size of that rounding (in one process, on one random
  batch, the union's gradient and the mean of its halves' differ by up to 2.9e-8 where the
  largest elements are 3e-6 and many are near 1e-8), where Adam's per-element normalisation
  turns a sign flip into a full lr-size (1e-3) difference; the codebooks' nearest-code choices
  then part on near ties. Measured in float32: 2.0e-3 on the discriminator and 4.8e-7 on the
  generator after one batch, 3.6e-3 and 2.0e-3 after four (code counts then 0.15 apart). In
  float64 the rounding is 1e-16 relative, far below Adam's eps (1e-8): measured 9.0e-14 on the
  discriminator, 4.4e-16 on the generator and its EMA, 8.8e-15 on the codebooks, 3.6e-15 on the
  balancer's statistics. The tolerance, 1e-9, leaves room for another reduction order (more
  ranks, another all-reduce algorithm); the defects found on the way gave far more (the
  k-means initialisation drew on the global RNG, which Lightning's DDP set-up re-seeds after the
  weights were drawn and one process does not: code counts 1.0 apart after one batch; relative feature matching was scaled by each
  rank's half batch: parameters 1.9e-5 apart after its first batch). 5 items per rank so that the
  k-means starts from distinct latent vectors (310 for 256 codes): with fewer vectors than codes
  it starts from duplicates, and which of two identical codes a vector picks is decided by the
  last bit of a distance (1.8e-4 apart in float64 after two batches; the quantized output is the
  same either way).
* Uneven train shards (5, 9 and 30 samples) on 2 processes x 2 loader workers: more readers
  than shards, a real DDP run of mt3_tiny through two epochs and their validations ends (a rank
  with fewer batches would leave the other waiting in the gradient reduction: a hang).
* kill -9 of an ``experiment=mt3_tiny`` run at two points, each time rerunning the same command:
  every restart resumes from ``last.ckpt`` with the global step continuing, and the run ends at
  ``trainer.max_steps``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.shards import ShardWriter
from tests.fixtures.toy_shards import toy_sample, write_toy_dataset
from tests.test_fault_tolerance import (
    assert_complete_checkpoints,
    start,
    start_steps,
    wait_for_step,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MT3 = ["experiment=mt3_tiny", "logger=csv", "loader.batch_size=2"]
NO_VALIDATION = "trainer.limit_val_batches=0"
STEPS = 4
TOLERANCE = 1e-6
CODEC = [
    "experiment=compression_tiny", "logger=csv", "trainer.precision=64-true", NO_VALIDATION,
    "solver.module.adversarial_warmup=2", "solver.module.optim.max_norm=1.0",
    "loader.global_batches=true", "loader.num_workers=1",
    f"loader.train_batches_per_epoch={STEPS}",
]  # fmt: skip
CODEC_PER_RANK = 5
CODEC_TOLERANCE = 1e-9


def train(
    dataset: Path, runs: Path, *overrides: str, preset: list[str] = MT3, steps: int = STEPS
) -> dict:
    """Train ``preset`` in ``runs`` for ``steps`` optimiser steps; its last checkpoint."""
    cmd = [sys.executable, "train.py", *preset, f"dataset.root={dataset}", f"paths.runs_dir={runs}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*cmd, f"trainer.max_steps={steps}", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (last,) = runs.glob("*/checkpoints/last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == steps
    return state


@pytest.mark.timeout(900)
def test_mt3_tiny_on_two_processes_matches_one_process(toy_dataset: Path, tmp_path: Path) -> None:
    single = train(
        toy_dataset,
        tmp_path / "single",
        NO_VALIDATION,
        "loader.num_workers=2",
        "+trainer.accumulate_grad_batches=2",
        f"loader.train_batches_per_epoch={2 * STEPS}",
    )
    ddp = train(
        toy_dataset,
        tmp_path / "ddp",
        NO_VALIDATION,
        "trainer=ddp",
        "loader.num_workers=1",
        f"loader.train_batches_per_epoch={STEPS}",
    )
    # the preset's weight average is what state_dict holds; the trained weights are beside it
    for key in ("current_model_state", "state_dict"):
        params, other = single[key], ddp[key]
        assert params.keys() == other.keys()
        diffs = {name: (params[name] - other[name]).abs().max().item() for name in params}
        worst = max(diffs, key=diffs.get)
        print(
            f"{key}: max |parameter difference| after {STEPS} steps: {diffs[worst]:.2e} ({worst})"
        )
        assert diffs[worst] <= TOLERANCE
    # the same optimiser history: as many Adam steps, first moments equal and not zero
    (adam,), (adam_ddp,) = single["optimizer_states"], ddp["optimizer_states"]
    moments = [(s["exp_avg"], adam_ddp["state"][i]["exp_avg"]) for i, s in adam["state"].items()]
    assert {float(s["step"]) for s in adam["state"].values()} == {float(STEPS)}
    assert max((a - b).abs().max().item() for a, b in moments) <= TOLERANCE
    assert sum(a.abs().sum().item() for a, _ in moments) > 0


def parameter_group(name: str) -> str:
    """``model``, ``model codebooks``, ``ema``, ``discriminator``, ``balancer``, ..."""
    return name.split(".")[0] + (" codebooks" if "._codebook." in name else "")


@pytest.mark.timeout(900)
def test_compression_tiny_on_two_processes_matches_one_process(
    toy_dataset: Path, tmp_path: Path
) -> None:
    batches = dict(preset=CODEC, steps=2 * STEPS)  # a generator and a discriminator step each
    single = train(
        toy_dataset, tmp_path / "single", f"loader.batch_size={2 * CODEC_PER_RANK}", **batches
    )
    ddp = train(
        toy_dataset,
        tmp_path / "ddp",
        f"loader.batch_size={CODEC_PER_RANK}",
        "trainer=ddp",
        **batches,
    )
    params, other = single["state_dict"], ddp["state_dict"]
    assert params.keys() == other.keys()
    assert all(t.dtype == torch.float64 for t in params.values() if t.is_floating_point())
    diffs = {name: (params[name] - other[name]).abs().max().item() for name in params}
    for group in sorted({parameter_group(name) for name in diffs}):
        worst = max((n for n in diffs if parameter_group(n) == group), key=diffs.get)
        print(f"{group}: max |difference| after {STEPS} batches {diffs[worst]:.1e} ({worst})")
    assert max(diffs.values()) <= CODEC_TOLERANCE
    counts = [name for name in params if name.endswith("cluster_size")]
    assert all(torch.equal(params[n], other[n]) for n in counts), "code counts are exact sums"
    assert params["balancer.norm_count"].min() > 0, "the adversarial losses were balanced"
    for adam, adam_ddp in zip(single["optimizer_states"], ddp["optimizer_states"], strict=True):
        moments = [
            (s["exp_avg"], adam_ddp["state"][i]["exp_avg"]) for i, s in adam["state"].items()
        ]
        assert {float(s["step"]) for s in adam["state"].values()} == {float(STEPS)}
        assert max((a - b).abs().max().item() for a, b in moments) <= CODEC_TOLERANCE
        assert sum(a.abs().sum().item() for a, _ in moments) > 0


def test_mt3_tiny_killed_twice_resumes_from_last_ckpt(toy_dataset: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable, "train.py", *MT3, f"dataset.root={toy_dataset}",
        f"paths.runs_dir={tmp_path / 'runs'}", NO_VALIDATION, "loader.num_workers=1",
        "loader.train_batches_per_epoch=5", "trainer.max_steps=14",
        "checkpoint.every_n_train_steps=2",
        "+callbacks.report._target_=tests.fixtures.callbacks.RankReport",
        f"+callbacks.report.folder={tmp_path / 'reports'}",
        "+callbacks.slow._target_=tests.fixtures.callbacks.Slowdown",
        "+callbacks.slow.seconds=0.3", f"+callbacks.slow.progress={tmp_path / 'progress'}",
    ]  # fmt: skip
    saved = []
    for kill_at in (5, 10):  # mid-epoch, then in the second epoch after resuming
        process = start(cmd, tmp_path)
        reached = wait_for_step(tmp_path, kill_at, process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        (checkpoints,) = (tmp_path / "runs").glob("*/checkpoints")
        assert_complete_checkpoints(checkpoints)
        saved.append(torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"])
        assert saved[-1] % 2 == 0 and kill_at - 2 <= saved[-1] <= reached + 1
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr
    print(f"kill -9 at steps >= 5 and >= 10: restarts began at {start_steps(tmp_path)}")
    assert start_steps(tmp_path) == [0, *saved]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 14


@pytest.mark.timeout(900)
def test_uneven_shards_on_two_processes_with_two_workers(tmp_path: Path) -> None:
    root = write_toy_dataset(tmp_path / "uneven", {"valid": 5, "test": 1}, per_shard=2)
    shards, key = [], 0
    for part, size in enumerate((5, 9, 30)):
        with ShardWriter(root, f"part{part}", max_samples=100) as writer:
            for _ in range(size):
                writer.write(f"toy-train-{key:03d}", *toy_sample(key, seconds=2.5))
                key += 1
        shards.append(f"part{part}-000000.tar")
    index = json.loads((root / "index.json").read_text())
    index["splits"]["train"] = {"shards": shards, "num_samples": key}
    (root / "index.json").write_text(json.dumps(index))
    state = train(
        root,
        tmp_path / "runs",
        "trainer=ddp",
        "loader.num_workers=2",
        "loader.train_batches_per_epoch=2",
        "loader.eval_batch_size=1",
        "solver.module.max_decode_length=16",
    )
    assert state["epoch"] >= 1
    (metrics,) = (tmp_path / "runs").glob("*/logs/**/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert len([r for r in rows if r.get("valid/onset_f1")]) == 2  # a validation per epoch
