"""Unreadable train shards never stop a run, and skip totals reach the metrics, train.log and tables
(issue 14 items 3 and 8)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from data.decode import SampleSpec
from data.skips import SKIP_REASONS, skip_note
from data.streams import EpochLoader, EvalStream, TrainStream
from musicgen.errors import UserError
from tests.fixtures.toy_shards import RATE, write_toy_dataset

REPO = Path(__file__).resolve().parents[1]
TOY_CONF = REPO / "tests" / "fixtures" / "conf"
SPEC = SampleSpec(RATE, 1, 0.5, ("audio",), "random")


def add_bad_shard(root: Path, split: str) -> Path:
    """A file that is not a tar, listed in ``index.json`` as the split's last shard."""
    index = json.loads((root / "index.json").read_text())
    bad = root / f"{split}-{len(index['splits'][split]['shards']):06d}.tar"
    bad.write_text("this is not a tar\n" * 50)
    index["splits"][split]["shards"].append(bad.name)
    (root / "index.json").write_text(json.dumps(index))
    return bad


@pytest.fixture(scope="module")
def one_good_one_bad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One good and one bad train shard (and a bad valid and test shard beside a good one)."""
    root = write_toy_dataset(
        tmp_path_factory.mktemp("half_bad"), {"train": 3, "valid": 2, "test": 3}, per_shard=3
    )
    for split in ("train", "valid", "test"):
        add_bad_shard(root, split)
    return root


def train_shards(root: Path) -> list[str]:
    return [str(p) for p in sorted(root.glob("train-*.tar"))]


def test_a_bad_shard_alone_on_a_worker_does_not_stop_training(one_good_one_bad: Path) -> None:
    stream = TrainStream(train_shards(one_good_one_bad), SPEC, 2, shuffle_buffer=4)
    loader = EpochLoader(DataLoader(stream, batch_size=None, num_workers=2), 5, "half_bad")
    epochs = [[len(batch["key"]) for batch in loader] for _ in range(3)]
    assert epochs == [[2] * 5] * 3
    totals = stream.shared.totals()
    assert totals["not_a_tar"] == 1, "the bad shard counts once, by its own reader"
    assert sum(totals.values()) == 1


def test_every_shard_bad_is_one_error_naming_the_dataset(tmp_path: Path) -> None:
    for i in range(2):
        (tmp_path / f"train-{i:06d}.tar").write_text("not a tar\n" * 50)
    stream = TrainStream(train_shards(tmp_path), SPEC, 2)
    loader = EpochLoader(DataLoader(stream, batch_size=None, num_workers=2), 5, "broken")
    with pytest.raises(UserError, match=r"dataset broken has no usable training sample") as err:
        list(loader)
    assert "not_a_tar=2" in str(err.value)


def test_worker_totals_add_up_to_each_skip_once(one_good_one_bad: Path) -> None:
    shards = [str(p) for p in sorted(one_good_one_bad.glob("test-*.tar"))]
    spec = SampleSpec(RATE, 1, 10.0, ("audio",), "start")  # toy samples last 3 s
    alone = EvalStream(shards, spec, 2)
    assert list(alone) == []
    workers = EvalStream(shards, spec, 2)
    assert list(DataLoader(workers, batch_size=None, num_workers=2)) == []
    assert workers.shared.totals() == alone.shared.totals()
    assert workers.shared.totals()["too_short"] == 3
    assert workers.shared.totals()["not_a_tar"] == 1


def test_skip_note() -> None:
    assert skip_note(dict.fromkeys(SKIP_REASONS, 0)) == "Skipped samples: none."
    note = skip_note({"not_a_tar": 1, "silent": 2})
    assert "3 (not_a_tar=1, silent=2)" in note


def run(script: str, *overrides: str, returncode: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, script, f"hydra.searchpath=[file://{TOY_CONF}]", "solver=toy"]
    result = subprocess.run(
        [*cmd, *overrides], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == returncode, result.stderr[-3000:]
    return result


def test_a_dataset_without_any_usable_train_shard_is_one_error_line(tmp_path: Path) -> None:
    root = write_toy_dataset(tmp_path / "broken", {"train": 0, "valid": 2, "test": 2})
    index = json.loads((root / "index.json").read_text())
    index["splits"]["train"]["shards"] = []
    (root / "index.json").write_text(json.dumps(index))
    for _ in range(2):
        add_bad_shard(root, "train")
    result = run(
        "train.py",
        f"dataset.root={root}",
        f"paths.runs_dir={tmp_path / 'runs'}",
        "logger=csv",
        "trainer=debug",
        "loader.num_workers=2",
        returncode=2,
    )
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "error: dataset synth has no usable training sample in its 2 train shard(s)" in line
    assert "not_a_tar=2" in line and "Traceback" not in result.stderr


def test_skip_totals_reach_metrics_train_log_and_tables(
    one_good_one_bad: Path, tmp_path: Path
) -> None:
    common = [f"dataset.root={one_good_one_bad}", f"paths.runs_dir={tmp_path}"]
    run(
        "train.py",
        *common,
        "logger=csv",
        "trainer=debug",
        "loader.batch_size=2",
        "loader.num_workers=2",
        "loader.train_batches_per_epoch=3",
    )
    (run_dir,) = tmp_path.iterdir()
    with next(run_dir.glob("logs/version_*/metrics.csv")).open() as f:
        rows = list(csv.DictReader(f))
    # 4 steps of 3-batch epochs: 2 epoch ends (the last at max_steps), 1 validation pass
    for metric, times in (("data/skipped", 2), ("data/valid_skipped", 1)):
        logged = [row for row in rows if row.get(metric)]
        assert len(logged) == times
        assert all(float(row[f"{metric}_not_a_tar"]) == 1 for row in logged)
    assert (
        (run_dir / "train.log")
        .read_text()
        .strip()
        .splitlines()[-1]
        .endswith(
            "skipped samples (all loader workers and ranks): "
            "training not_a_tar=1; last validation not_a_tar=1"
        )
    )

    run("evaluate.py", *common, f"checkpoint={run_dir}/checkpoints/last.ckpt")
    (eval_dir,) = (tmp_path / "eval").iterdir()
    assert (
        "Skipped samples (unusable data, not in these numbers): 1 (not_a_tar=1)."
        in (eval_dir / "results.md").read_text()
    )
    assert "not_a_tar=1" in json.loads((eval_dir / "results.json").read_text())["notes"]


@pytest.mark.slow  # a 2-process run
def test_ddp_sums_the_ranks_and_a_rank_with_only_a_bad_shard_keeps_training(
    one_good_one_bad: Path, tmp_path: Path
) -> None:
    """2 ranks x 1 worker: rank 1's only train shard is the bad one; it reads the good one instead,
    and rank 0 (which met no bad shard) logs rank 1's counts, of training and validation."""
    run(
        "train.py",
        f"dataset.root={one_good_one_bad}",
        f"paths.runs_dir={tmp_path}",
        "logger=csv",
        "trainer=ddp",
        "trainer.max_steps=4",
        "+trainer.limit_val_batches=2",
        "loader.batch_size=2",
        "loader.num_workers=1",
        "loader.train_batches_per_epoch=2",
    )
    (run_dir,) = tmp_path.iterdir()
    with next(run_dir.glob("logs/version_*/metrics.csv")).open() as f:
        rows = list(csv.DictReader(f))
    for metric in ("data/skipped", "data/valid_skipped"):
        logged = [row for row in rows if row.get(metric)]
        assert len(logged) == 2 and all(float(row[f"{metric}_not_a_tar"]) == 1 for row in logged)
    assert "not_a_tar=1" in (run_dir / "train.log").read_text().strip().splitlines()[-1]
