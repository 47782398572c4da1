"""Train a solver: ``python train.py solver=<name> dataset=<name> [overrides]``.

The run directory is derived from the solver, the dataset and a hash of the overrides, so the
same command resumes the same run from its ``last.ckpt``; a SLURM job requeued after preemption
reruns the same command (``python train.py -m hydra/launcher=slurm cluster=<name> ...``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from solvers.cluster import check_cluster
from solvers.preemption import remove_partial_checkpoints
from solvers.resume import resume_checkpoint
from solvers.runtime import (
    build_datamodule,
    build_trainer,
    checkpoint_dir,
    last_checkpoint,
    register_resolvers,
    run_entry,
)
from solvers.validate_config import validate_config

log = logging.getLogger("train")
register_resolvers()


def train(cfg: DictConfig) -> dict:
    """Fit the configured solver on the configured dataset; returns the final logged metrics."""
    validate_config(cfg)  # every value's type and range, before anything heavy
    run_dir = Path(cfg.run.dir)
    check_cluster(cfg)  # trainer vs cluster config vs SLURM allocation, before anything heavy
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)  # checks dataset fields against the solver first
    datamodule.check_source()
    solver = instantiate(cfg.solver.module, _convert_="all")
    trainer = build_trainer(cfg, run_dir)
    ckpt = (
        resume_checkpoint(last_checkpoint(run_dir), cfg.solver.name, solver)
        if cfg.run.resume
        else None
    )
    if trainer.is_global_zero:
        for partial in remove_partial_checkpoints(checkpoint_dir(run_dir)):
            log.warning("removed %s, left by a checkpoint write that was killed", partial)
        log.info(
            "run %s in %s%s (world size %d)",
            cfg.run.name,
            run_dir,
            f" (resuming from {ckpt})" if ckpt else "",
            trainer.world_size,
        )
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer.fit(solver, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry(train, cfg)


if __name__ == "__main__":
    main()
