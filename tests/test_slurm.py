"""Multi-node sweeps and preemption on a real SLURM cluster (scripts/local_slurm.sh), and the
cluster configs that keep the launcher and the trainer in agreement.

The `slurm` tests bring the throw-away cluster up themselves (nodes n1, n2 on this machine; the
script installs the Debian packages when they are missing, which needs root) and take it down
again when they started it. Each job is a 2-node x 2-task CPU DDP run over gloo: world size 4.

The sweep trains the real compression solver's CPU preset (`experiment=compression_tiny`) when it
is in the tree, else the toy solver of tests/fixtures; the preemption test uses the toy solver,
whose steps a test callback can slow down to interrupt it mid-training.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from musicgen.errors import UserError
from solvers.cluster import (
    allocation_mismatch,
    check_cluster,
    cluster_mismatch,
    slurm_launch_problem,
)
from solvers.runtime import register_resolvers, run_hash
from tests.fixtures.callbacks import read_reports

REPO = Path(__file__).resolve().parents[1]
TOY_CONF = REPO / "tests" / "fixtures" / "conf"
SCRIPT = REPO / "scripts" / "local_slurm.sh"
STATE = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/musicgen-local-slurm"))


# -- the cluster --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def slurm_cluster() -> dict[str, str]:
    """An up SLURM cluster; returns the environment for its clients (SLURM_CONF)."""
    env = {**os.environ, "LOCAL_SLURM_DIR": str(STATE)}
    started = False
    if subprocess.run([SCRIPT, "status"], env=env, capture_output=True).returncode != 0:
        if os.geteuid() != 0 and not shutil.which("slurmctld"):
            pytest.skip(
                "the SLURM tests need root (to install slurm and edit /etc/hosts) or a running local cluster"
            )
        result = subprocess.run(
            [SCRIPT, "up"], env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr
        started = True
    env["SLURM_CONF"] = str(STATE / "slurm.conf")
    env["WANDB_MODE"] = "offline"
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_SERVICE", None)  # a W&B service of this process: jobs must start their own
    yield env
    if started:
        subprocess.run([SCRIPT, "down"], env=env, capture_output=True, timeout=120)


def squeue_state(job: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True, text=True
    )
    return out.stdout.strip()


def job_ids(runs: Path) -> list[str]:
    """SLURM ids of the jobs submitit started under ``runs``: ``<array>_<index>``, or ``<id>`` for
    a sweep of one job (no array)."""
    return sorted(p.parent.name for p in (runs / ".submitit").glob("*/*_submitted.pkl"))


@pytest.fixture
def cancel_leftovers(slurm_cluster: dict, tmp_path: Path):
    """Cancel the jobs a test started under ``tmp_path/runs`` if it ends before they do."""
    yield
    jobs = job_ids(tmp_path / "runs") if (tmp_path / "runs" / ".submitit").exists() else []
    if jobs:
        subprocess.run(["scancel", *jobs], env=slurm_cluster, capture_output=True)


TOY = [f"hydra.searchpath=[file://{TOY_CONF}]", "solver=toy"]
TOY_DEBUG = [*TOY, "trainer=debug"]
HAS_COMPRESSION = (REPO / "conf" / "experiment" / "compression_tiny.yaml").exists() and (
    REPO / "solvers" / "compression.py"
).exists()


def sweep_command(
    runs: Path, dataset: Path, *overrides: str, solver: list[str] = TOY_DEBUG
) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        "cluster=slurm_cpu_2x2",
        *solver,
        f"dataset.root={dataset}",
        f"paths.runs_dir={runs}",
        "loader.num_workers=0",
        "loader.batch_size=2",
        "+callbacks.report._target_=tests.fixtures.callbacks.RankReport",
        "+callbacks.report.folder=${run.dir}/ranks",
        *overrides,
    ]


def train_steps(run_dir: Path) -> list[int]:
    steps = []
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with path.open() as f:
            steps += [int(row["step"]) for row in csv.DictReader(f) if row.get("train/l1")]
    return steps


def wait(process: subprocess.Popen, log: Path, timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(
            f"the sweep did not finish in {timeout} s:\n{log.read_text()[-3000:]}"
        ) from None
    assert process.returncode == 0, log.read_text()[-3000:]


# -- tests that need the cluster ----------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_sweep_of_two_multi_node_ddp_jobs(
    slurm_cluster: dict, cancel_leftovers: None, toy_dataset: Path, tmp_path: Path
) -> None:
    runs, log = tmp_path / "runs", tmp_path / "sweep.log"
    if HAS_COMPRESSION:
        # A GAN under DDP: its solver config asks for ddp_find_unused_parameters_true.
        solver = [
            "experiment=compression_tiny",
            "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1",
        ]
        name, lr_key, lrs, steps = "compression-synth-", ("optim", "lr"), "0.001,0.002", 4
        logged = [
            0,
            1,
        ]  # manual optimisation: 2 optimiser steps (generator, discriminator) per batch
    else:
        solver, name, lr_key, lrs, steps, logged = (
            TOY_DEBUG,
            "toy-synth-",
            ("lr",),
            "0.01,0.02",
            6,
            list(range(6)),
        )
    override = f"{'+' if not HAS_COMPRESSION else ''}solver.module.{'.'.join(lr_key)}={lrs}"
    cmd = sweep_command(
        runs,
        toy_dataset,
        "logger=csv",
        f"trainer.max_steps={steps}",
        "loader.train_batches_per_epoch=2",
        override,
        solver=solver,
    )
    with log.open("w") as out:
        process = subprocess.Popen(
            cmd, cwd=REPO, env=slurm_cluster, stdout=out, stderr=subprocess.STDOUT
        )
    wait(process, log, timeout=480)

    run_dirs = sorted(p for p in runs.iterdir() if p.name.startswith(name))
    assert len(run_dirs) == 2 and len(job_ids(runs)) == 2
    seen_lrs = set()
    for run_dir in run_dirs:
        reports = [read_reports(run_dir / "ranks", rank) for rank in range(4)]
        assert all(len(r) == 1 for r in reports), "each rank starts once"
        reports = [r[0] for r in reports]
        assert {r["world_size"] for r in reports} == {4}
        assert [r["node_rank"] for r in reports] == [0, 0, 1, 1]
        assert [r["local_rank"] for r in reports] == [0, 1, 0, 1]
        assert {(r["environment"], r["auto_requeue"], r["backend"]) for r in reports} == {
            ("SLURMEnvironment", False, "gloo")
        }
        # where the README says: runs/<solver>-<dataset>-<hash>/{config.yaml,checkpoints/last.ckpt,logs/}
        assert (
            torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
            == steps
        )
        assert train_steps(run_dir) == logged
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["run"]["name"] == run_dir.name and config["trainer"]["num_nodes"] == 2
        module = config["solver"]["module"]
        for key in lr_key:
            module = module[key]
        seen_lrs.add(module)
        # only rank 0 writes .hydra/ and train.log; the others log to train.rank<N>.log
        assert (run_dir / ".hydra" / "config.yaml").exists()
        assert "world size 4" in (run_dir / "train.log").read_text()
        assert sorted(p.name for p in run_dir.glob("train*.log")) == [
            "train.log",
            "train.rank1.log",
            "train.rank2.log",
            "train.rank3.log",
        ]
    assert seen_lrs == {float(v) for v in lrs.split(",")}


# How a test stops the running job: the preemption signal (what SLURM sends signal_delay_s before
# the time limit, and what a preempting admin sends), an admin's requeue (SIGTERM to every process,
# SLURM requeues by itself), or both at once (submitit's own requeue then fails: issue 14 item 9).
USR2 = ["scancel", "--signal=USR2"]
REQUEUE = ["scontrol", "requeue"]
STOPS = {
    "USR2": [USR2],
    "scontrol_requeue": [REQUEUE],
    "USR2_and_scontrol_requeue": [USR2, REQUEUE],
}


@pytest.mark.slurm
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "stop",
    [  # ~40 s each on 2 cores: make test-all (the fast suite keeps the sweep and signal tests)
        pytest.param("USR2", marks=pytest.mark.slow),
        pytest.param("scontrol_requeue", marks=pytest.mark.slow),
        pytest.param("USR2_and_scontrol_requeue", marks=pytest.mark.slow),
    ],
)
def test_preempted_job_saves_requeues_and_resumes(
    slurm_cluster: dict, cancel_leftovers: None, toy_dataset: Path, tmp_path: Path, stop: str
) -> None:
    runs, log, progress = tmp_path / "runs", tmp_path / "sweep.log", tmp_path / "progress"
    steps = 24
    cmd = sweep_command(
        runs,
        toy_dataset,
        f"trainer.max_steps={steps}",
        "checkpoint.every_n_train_steps=1000",
        "loader.train_batches_per_epoch=4",
        "+callbacks.slow._target_=tests.fixtures.callbacks.Slowdown",
        "+callbacks.slow.seconds=0.3",
        f"+callbacks.slow.progress={progress}",
    )  # logger: W&B, offline
    with log.open("w") as out:
        process = subprocess.Popen(
            cmd, cwd=REPO, env=slurm_cluster, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 300
    while not (progress.exists() and progress.read_text() and int(progress.read_text()) >= 5):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    (job,) = job_ids(runs)
    for command in STOPS[stop]:
        subprocess.run([*command, job], env=slurm_cluster, check=True)
    # SLURM holds a requeued job for ~2 minutes (BeginTime); release it so the test stays short.
    while squeue_state(job, slurm_cluster) != "PENDING":
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    subprocess.run(
        ["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_cluster, check=True
    )
    wait(process, log, timeout=300)  # exit 0: the job's one result is the finished run

    (run_dir,) = [p for p in runs.iterdir() if p.name.startswith("toy-synth-")]
    first, second = read_reports(run_dir / "ranks")  # requeued once
    assert (first["slurm_restart_count"], second["slurm_restart_count"]) == (0, 1)
    assert first["slurm_job_id"] == second["slurm_job_id"]
    saved = second["start_step"]
    assert saved >= 5, "resumed from the checkpoint written on the signal"
    assert (
        torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == steps
    )
    submitit_log = "".join(p.read_text() for p in (runs / ".submitit" / job).glob("*_0_log.*"))
    signals = {"USR2": "SIGUSR2", "scontrol_requeue": "SIGTERM"}.get(stop, "")
    assert f"{signals} received: saving {run_dir}/checkpoints/last.ckpt at step {saved}" in (
        submitit_log
    )
    # (submitit's own "Requeued job" line is not asserted: SLURM may stop the job before that
    # line is flushed; restart count 1 under the same job id above is the requeue.)
    assert "resuming from" in (run_dir / "train.log").read_text()
    # one W&B run id (the run name) across the requeue: two offline runs of the same id
    wandb_runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and all(name.endswith(f"-{run_dir.name}") for name in wandb_runs)


# -- the configs (no cluster needed) -------------------------------------------------------------
def compose_train(*overrides: str):
    register_resolvers()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"hydra.searchpath=[file://{TOY_CONF}]", "solver=toy", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("cluster", ["local", "slurm_cpu_2x2", "slurm_gpu_4x8"])
@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "fsdp", "debug"])
def test_cluster_and_trainer_presets_compose(cluster: str, trainer: str) -> None:
    cfg = compose_train(f"cluster={cluster}", f"trainer={trainer}", "hydra/launcher=slurm")
    layout = OmegaConf.to_container(cfg.trainer, resolve=True)
    resources = OmegaConf.to_container(cfg.cluster, resolve=True)
    # trainer=ddp means "2 local processes": with a SLURM cluster it only fits 2 tasks per node.
    valid = {
        ("slurm_cpu_2x2", "cpu"),
        ("slurm_cpu_2x2", "debug"),
        ("slurm_cpu_2x2", "ddp"),
        ("slurm_gpu_4x8", "gpu"),
        ("slurm_gpu_4x8", "fsdp"),
    }
    if cluster != "local":
        assert (cluster_mismatch(resources, layout) is None) == ((cluster, trainer) in valid)
        if (cluster, trainer) in valid:
            assert (layout["num_nodes"], layout["devices"]) == (
                resources["nodes"],
                resources["tasks_per_node"],
            )
        assert (
            OmegaConf.to_container(cfg.hydra.launcher, resolve=False)["nodes"] == "${cluster:nodes}"
        )
    if trainer == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = instantiate(cfg.trainer.strategy)
        assert isinstance(strategy, FSDPStrategy) and layout["precision"] == "bf16-mixed"


def test_the_launcher_takes_every_resource_from_the_cluster() -> None:
    cfg = compose_train(
        "cluster=slurm_gpu_4x8",
        "trainer=fsdp",
        "hydra/launcher=slurm",
        "cluster.nodes=2",
        "cluster.partition=learn",
    )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 8, 8)
    assert (launcher["partition"], launcher["timeout_min"], launcher["mem_gb"]) == (
        "learn",
        4320,
        480,
    )
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (2, 8)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["trainer.devices=3"],
            "trainer.devices=3 but cluster=slurm_cpu_2x2 starts cluster.tasks_per_node=2",
        ),
    ],
)
def test_a_mismatch_stops_the_sweep_before_submission(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        "cluster=slurm_cpu_2x2",
        f"hydra.searchpath=[file://{TOY_CONF}]",
        "solver=toy",
        f"paths.runs_dir={tmp_path}",
        *overrides,
    ]
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()  # one sentence, no traceback
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / ".submitit").exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["trainer.num_nodes=4"],
            "trainer.num_nodes=4 but cluster=slurm_cpu_2x2 reserves cluster.nodes=2",
        ),
        (
            ["trainer=gpu"],
            "needs one GPU per task but cluster=slurm_cpu_2x2 reserves cluster.gpus_per_node=0",
        ),
        (
            ["cluster=slurm_gpu_4x8"],
            "reserves 8 GPUs per node but trainer.accelerator=cpu: add trainer=gpu",
        ),
        (["trainer.strategy=ddp_spawn"], "trainer.strategy=ddp_spawn starts its own processes"),
        (["cluster=local"], "hydra/launcher=slurm needs a SLURM cluster config but cluster=local"),
        (["cluster.nodes=3"], None),
        (
            ["cluster.tasks_per_node=4", "trainer=ddp"],
            "trainer.devices=2 but cluster=slurm_cpu_2x2 starts cluster.tasks_per_node=4",
        ),
    ],
)
def test_cluster_mismatches_in_one_sentence(overrides: list[str], message: str | None) -> None:
    cfg = compose_train("cluster=slurm_cpu_2x2", "hydra/launcher=slurm", *overrides)
    problem = slurm_launch_problem(cfg.cluster, cfg.trainer)
    assert problem == message if message is None else message in problem
    if message and "cluster=local" not in overrides:  # train.py says the same inside a job
        with pytest.raises(UserError, match=message.split(":")[0][:40]):
            check_cluster(cfg)


def test_inside_a_job_the_allocation_must_match_the_trainer() -> None:
    trainer = {"num_nodes": 2, "devices": 2}
    assert (
        allocation_mismatch(trainer, {"SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "2"})
        is None
    )
    assert (
        allocation_mismatch(trainer, {"SLURM_JOB_NUM_NODES": "2", "SLURM_TASKS_PER_NODE": "2(x2)"})
        is None
    )
    assert "has 4 nodes but trainer.num_nodes=2" in allocation_mismatch(
        trainer, {"SLURM_JOB_NUM_NODES": "4"}
    )
    assert "starts 8 tasks per node but trainer.devices=2" in allocation_mismatch(
        trainer, {"SLURM_NTASKS_PER_NODE": "8"}
    )


def test_scheduler_bookkeeping_keeps_the_run_name_but_the_layout_does_not() -> None:
    base = run_hash(["cluster=slurm_gpu_4x8", "optim.lr=1"])
    assert base == run_hash(
        [
            "cluster=slurm_gpu_4x8",
            "optim.lr=1",
            "cluster.partition=x",
            "cluster.timeout_min=5",
            "cluster.qos=high",
        ]
    )
    assert base != run_hash(["cluster=slurm_gpu_4x8", "optim.lr=1", "cluster.nodes=2"])


def test_an_override_that_mentions_the_run_dir_keeps_the_name(tmp_path: Path) -> None:
    plain = compose_train().run.name
    with_dir = compose_train("+callbacks.x.path=${run.dir}/x").run.name  # resolves without looping
    assert with_dir != plain  # a new override, a new run
    assert with_dir == compose_train("+callbacks.x.path=${run.dir}/x").run.name


@pytest.mark.slow  # ~15 s on 2 cores: make test-all (the SLURM sweep test starts DDP ranks too)
@pytest.mark.timeout(300)
def test_the_local_launcher_starts_one_task_per_rank(toy_dataset: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "train.py", "-m", "hydra/launcher=local", "trainer=ddp", *TOY,
        f"dataset.root={toy_dataset}", f"paths.runs_dir={runs}", "logger=csv", "trainer.max_steps=3",
        "loader.num_workers=0", "loader.batch_size=2",
        "+callbacks.report._target_=tests.fixtures.callbacks.RankReport",
        "+callbacks.report.folder=${run.dir}/ranks",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in runs.iterdir() if p.name.startswith("toy-synth-")]
    reports = [read_reports(run_dir / "ranks", rank)[0] for rank in range(2)]
    assert {(r["world_size"], r["environment"]) for r in reports} == {
        (2, "SubmititLocalEnvironment")
    }
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
