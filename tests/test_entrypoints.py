"""train.py end to end on a toy solver: run directories, resume, logs, and user errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from musicgen.errors import UserError
from solvers.runtime import build_trainer, register_resolvers, run_entry, run_hash

REPO = Path(__file__).resolve().parents[1]
TOY_CONF = REPO / "tests" / "fixtures" / "conf"


def train(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "train.py",
        f"hydra.searchpath=[file://{TOY_CONF}]",
        "solver=toy",
        *overrides,
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def logged_steps(run_dir: Path) -> list[int]:
    steps = []
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with path.open() as f:
            steps += [int(row["step"]) for row in csv.DictReader(f) if row.get("train/l1")]
    return steps


def test_run_hash_ignores_order_paths_and_length() -> None:
    a = run_hash(["solver=toy", "loader.batch_size=2", "optim.lr=1", "paths.runs_dir=/x"])
    assert a == run_hash(["optim.lr=1", "loader.batch_size=2", "trainer.max_steps=9"])
    assert a != run_hash(["optim.lr=2", "loader.batch_size=2"])


def test_train_then_resume_in_the_same_run(toy_dataset: Path, tmp_path: Path) -> None:
    common = [
        f"dataset.root={toy_dataset}",
        "logger=csv",
        "trainer=debug",
        f"paths.runs_dir={tmp_path}",
        "loader.train_batches_per_epoch=3",
        "loader.batch_size=2",
        "loader.num_workers=1",
    ]
    train(*common, "trainer.max_steps=4")
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("toy-synth-")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    result = train(*common, "trainer.max_steps=7")
    assert [p.name for p in tmp_path.iterdir()] == [run_dir.name], (
        "same command must land in the same run"
    )
    assert "resuming from" in result.stdout + result.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 7
    assert logged_steps(run_dir) == list(range(7))

    cmd = [
        sys.executable,
        "evaluate.py",
        f"hydra.searchpath=[file://{TOY_CONF}]",
        "solver=toy",
        *common[:1],
        f"paths.runs_dir={tmp_path}",
        f"checkpoint={run_dir}/checkpoints/last.ckpt",
        "loader.num_workers=0",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (eval_dir,) = (tmp_path / "eval").iterdir()
    rows = json.loads((eval_dir / "results.json").read_text())["rows"]
    assert rows[0]["split"] == "test" and 0 < rows[0]["test/l1"] < 1
    assert "| toy | synth | test |" in (eval_dir / "results.md").read_text()


def test_evaluate_names_a_missing_checkpoint(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "evaluate.py",
        f"hydra.searchpath=[file://{TOY_CONF}]",
        "solver=toy",
        f"paths.runs_dir={tmp_path}",
        f"checkpoint={tmp_path}/nope.ckpt",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert f"checkpoint {tmp_path}/nope.ckpt does not exist" in result.stderr


def test_mistyped_override_is_one_clear_error() -> None:
    result = train("trainer.max_stepz=3", check=False)
    assert result.returncode != 0
    assert "Key 'max_stepz' is not in struct" in result.stderr


def test_missing_solver_is_a_clear_error() -> None:
    result = subprocess.run([sys.executable, "train.py"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "You must specify 'solver'" in result.stderr


def test_dataset_lacking_a_field_fails_before_training(tmp_path: Path) -> None:
    result = train(
        "dataset=mtg",
        "logger=csv",
        f"paths.runs_dir={tmp_path}",
        "solver.data.fields=[audio,notes]",
        check=False,
    )
    assert result.returncode == 2
    assert (
        "solver=toy needs ['notes'] but dataset=mtg only provides ['audio', 'caption']"
        in result.stderr
    )
    assert not list(tmp_path.glob("*/checkpoints"))


def test_unprepared_dataset_names_the_fix(tmp_path: Path) -> None:
    result = train(
        "dataset=mtg",
        "logger=csv",
        f"paths.data_dir={tmp_path}",
        f"paths.runs_dir={tmp_path}",
        check=False,
    )
    assert result.returncode == 2
    assert (
        f"dataset mtg is not prepared at {tmp_path}/mtg: run `python -m data.prepare mtg --root"
        in result.stderr
    )


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (REPO / "conf" / group).glob("*.yaml"))


# Every option of every group, on top of the toy solver; solvers and presets on their own.
CASES = [
    (f"{group}={option}", "solver=toy")
    for group in ("dataset", "trainer", "logger", "cluster")
    for option in options(group)
]
CASES += [(f"solver={option}", "") for option in options("solver")]
CASES += [
    (f"experiment={option}", "solver=musicgen" if option.startswith("musicgen") else "")
    for option in options("experiment")
]


def compose_train(*overrides: str) -> DictConfig:
    """train.yaml composed with ``overrides`` (and the toy solver's search path), hydra config set."""
    register_resolvers()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"hydra.searchpath=[file://{TOY_CONF}]", *filter(None, overrides)],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("override,base", CASES)
def test_every_config_group_option_composes(override: str, base: str) -> None:
    cfg = compose_train(base, override)
    resolved = {
        k: OmegaConf.to_container(v, resolve=True)
        for k, v in cfg.items()
        if k != "hydra" and OmegaConf.is_config(v)
    }
    assert resolved["run"]["name"].startswith(
        f"{resolved['solver']['name']}-{resolved['dataset']['name']}-"
    )
    assert set(resolved["dataset"]["provides"]) <= {"audio", "stems", "notes", "caption"}
    assert set(resolved["solver"]["data"]["fields"]) <= {"audio", "stems", "notes", "caption"}


@pytest.mark.parametrize(("solver", "expected"), [("compression", True), ("mt3", False)])
def test_gan_solvers_get_ddp_with_unused_parameters(
    solver: str, expected: bool, tmp_path: Path
) -> None:
    cfg = compose_train(f"solver={solver}", "trainer=ddp", "logger=csv")
    trainer = build_trainer(cfg, tmp_path)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) is expected


def test_a_user_error_raised_inside_instantiate_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture,
) -> None:
    def task(cfg: object) -> None:  # what hydra.utils.instantiate does with a solver's UserError
        try:
            raise UserError("solver.module.codec_checkpoint does not exist: train a codec first")
        except UserError as err:
            raise InstantiationException("Error in call to target 'Solver'") from err

    with pytest.raises(SystemExit) as info:
        run_entry(task, OmegaConf.create({}))
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: solver.module.codec_checkpoint does not exist: train a codec first\n"
    )


def test_other_errors_are_not_swallowed() -> None:
    def task(cfg: object) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_entry(task, OmegaConf.create({}))
