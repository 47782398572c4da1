"""The ``cluster`` config: one place for the scheduler's resources and the trainer's process layout.

A ``conf/cluster/<name>.yaml`` sets the launcher's resources (``cluster.nodes``,
``cluster.tasks_per_node``, ``cluster.gpus_per_node``, ...) and the trainer's ``num_nodes``,
``devices`` and ``strategy`` by interpolation of those keys, so they agree unless a command line
overrides one side. :func:`cluster_mismatch` names such a disagreement in one sentence; it runs

* in the submitting process of a sweep, right after Hydra composed the config and before the
  launcher exists (:class:`ClusterCheck`, a Hydra callback): one ``error:`` line, exit 2, nothing
  submitted; the ``${cluster:KEY}`` resolver of ``conf/hydra/launcher/slurm.yaml`` checks again, and
* at the start of ``train.py`` (:func:`check_cluster`), which inside a SLURM job also compares the
  trainer with the allocation SLURM actually gave (``SLURM_JOB_NUM_NODES``, ``SLURM_NTASKS_PER_NODE``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from musicgen.errors import UserError

# Strategies that start their own processes: they cannot run under a scheduler that already
# starts one process per device.
SPAWNING_STRATEGIES = (
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_false_spawn",
)
GPU_ACCELERATORS = ("gpu", "cuda")


def _strategy_name(strategy: object) -> str:
    if isinstance(strategy, Mapping):
        return str(strategy.get("_target_", "")).rsplit(".", 1)[-1]
    return str(strategy)


def cluster_mismatch(cluster: Mapping, trainer: Mapping) -> str | None:
    """One sentence naming how ``trainer`` disagrees with a SLURM ``cluster``, or None when they agree."""
    if cluster.get("scheduler") != "slurm":
        return None
    name = cluster.get("name", "?")
    nodes, tasks = cluster.get("nodes"), cluster.get("tasks_per_node")
    gpus = cluster.get("gpus_per_node") or 0
    if trainer.get("num_nodes") != nodes:
        return (
            f"trainer.num_nodes={trainer.get('num_nodes')} but cluster={name} reserves cluster.nodes={nodes}: "
            "set cluster.nodes instead (the trainer follows it)"
        )
    if trainer.get("devices") != tasks:
        return (
            f"trainer.devices={trainer.get('devices')} but cluster={name} starts cluster.tasks_per_node={tasks} "
            "processes per node: set cluster.tasks_per_node instead (the trainer follows it)"
        )
    accelerator = str(trainer.get("accelerator"))
    if gpus and accelerator == "cpu":
        return f"cluster={name} reserves {gpus} GPUs per node but trainer.accelerator=cpu: add trainer=gpu"
    if accelerator in GPU_ACCELERATORS and gpus < tasks:
        return (
            f"trainer.accelerator={accelerator} with cluster.tasks_per_node={tasks} needs one GPU per task "
            f"but cluster={name} reserves cluster.gpus_per_node={gpus or 0}: set cluster.gpus_per_node={tasks}"
        )
    strategy = _strategy_name(trainer.get("strategy"))
    if strategy in SPAWNING_STRATEGIES:
        return f"trainer.strategy={strategy} starts its own processes, which SLURM already does: use ddp or fsdp"
    return None


def check_cluster(cfg: DictConfig) -> None:
    """Fail in one sentence when the trainer disagrees with the cluster config or with SLURM's allocation."""
    if cfg.get("cluster") is None:
        return
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    problem = cluster_mismatch(cluster, trainer)
    if problem is None and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        problem = allocation_mismatch(trainer, os.environ)
    if problem:
        raise UserError(problem)


def _tasks_per_node(env: Mapping[str, str]) -> int | None:
    value = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    match = re.match(r"(\d+)", value or "")
    return int(match.group(1)) if match else None


def allocation_mismatch(trainer: Mapping, env: Mapping[str, str]) -> str | None:
    """Inside a SLURM job: one sentence when the trainer's layout is not the allocation's."""
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    if nodes is not None and int(nodes) != trainer.get("num_nodes"):
        return (
            f"this SLURM job has {nodes} nodes but trainer.num_nodes={trainer.get('num_nodes')}: "
            "set the node count with cluster.nodes, not hydra.launcher.nodes"
        )
    tasks = _tasks_per_node(env)
    if tasks is not None and tasks != trainer.get("devices"):
        return (
            f"this SLURM job starts {tasks} tasks per node but trainer.devices={trainer.get('devices')}: "
            "set the process count with cluster.tasks_per_node, not hydra.launcher.tasks_per_node"
        )
    return None


def cluster_value(key: str, *, _root_: DictConfig) -> object:
    """``${cluster:KEY}``: ``cluster.KEY``, after checking that the trainer agrees with the cluster."""
    cluster = _root_.get("cluster")
    if cluster is None and "trainer" not in _root_:
        # Hydra merging the launcher file on its own, before the full config exists: a placeholder
        # of the right type (the launcher's schema types its dict and list fields).
        return {"additional_parameters": {}, "setup": []}.get(key)
    problem = slurm_launch_problem(cluster, _root_.get("trainer"))
    if problem:
        raise ValueError(problem)
    value = cluster.get(key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def slurm_launch_problem(cluster: DictConfig | None, trainer: DictConfig | None) -> str | None:
    """What is wrong with launching this config through ``hydra/launcher=slurm``, in one sentence."""
    if cluster is None or cluster.get("scheduler") != "slurm":
        name = cluster.get("name") if cluster is not None else None
        return (
            f"hydra/launcher=slurm needs a SLURM cluster config but cluster={name}: "
            "add cluster=<name> (see conf/cluster/, e.g. cluster=slurm_gpu_4x8)"
        )
    return cluster_mismatch(
        OmegaConf.to_container(cluster, resolve=True), OmegaConf.to_container(trainer, resolve=True)
    )


class ClusterCheck(HydraCallback):
    """Hydra callback: before a sweep is launched, stop with one line when the cluster config and
    the trainer disagree (or the SLURM launcher has no SLURM cluster)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if launcher.endswith("SlurmLauncher"):
            problem = slurm_launch_problem(config.get("cluster"), config.get("trainer"))
        elif launcher.endswith("LocalLauncher") and config.trainer.get("num_nodes", 1) != 1:
            problem = (
                f"hydra/launcher=local runs on this machine but trainer.num_nodes={config.trainer.num_nodes}: "
                "use hydra/launcher=slurm with a cluster, or one node"
            )
        elif config.get("cluster") is not None:
            problem = cluster_mismatch(
                OmegaConf.to_container(config.cluster, resolve=True),
                OmegaConf.to_container(config.trainer, resolve=True),
            )
        else:
            problem = None
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)


def launch_rank() -> int:
    """Global rank of this process as the launcher set it (SLURM task id, or torch's ``RANK``); 0 otherwise."""
    for name in ("SLURM_PROCID", "RANK"):
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def rank_suffix() -> str:
    """``${rank_suffix:}``: "" on rank 0, ``.rank<N>`` elsewhere (per-rank log file names)."""
    rank = launch_rank()
    return "" if rank == 0 else f".rank{rank}"


def rank_zero_only(value: object) -> object:
    """``${rank_zero_only:VALUE}``: VALUE on rank 0, None on the others (e.g. ``hydra.output_subdir``)."""
    return value if launch_rank() == 0 else None
