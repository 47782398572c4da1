"""Evaluate a trained solver: ``python evaluate.py solver=<name> checkpoint=PATH dataset=<name>``.

Runs the solver's test loop on ``split`` and writes ``results.{md,csv,json}`` in the run
directory (``runs/eval/<solver>-<dataset>-<hash>``). A solver with an ``evaluation_tables()``
method (returning :class:`musicgen.tables.Table` objects, e.g. a paper's table with the
published numbers beside ours) gets those written there too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig, OmegaConf

from data.datamodule import SkipReport
from data.skips import skip_note
from musicgen.checkpoint_io import load_lightning_checkpoint
from musicgen.errors import UserError
from musicgen.tables import Table, write_tables
from solvers.restore import load_weights, restore_solver_config
from solvers.runtime import build_datamodule, register_resolvers, run_entry
from solvers.validate_config import validate_config

log = logging.getLogger("evaluate")
register_resolvers()


def restore_checkpoint(cfg: DictConfig) -> tuple[Path, dict]:
    """Read ``cfg.checkpoint`` and put its training solver config into ``cfg`` (the command
    line's ``solver.*`` overrides on top)."""
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise UserError("no checkpoint given: pass checkpoint=<run dir>/checkpoints/last.ckpt")
    path = Path(cfg.checkpoint)
    state = load_lightning_checkpoint(path)
    restore_solver_config(cfg, state, path, list(HydraConfig.get().overrides.task))
    return path, state


def evaluate(cfg: DictConfig) -> list[dict]:
    """Run the test loop of the solver on ``cfg.split``; returns the table rows written."""
    validate_config(cfg)  # every value's type and range, before anything heavy
    path, state = restore_checkpoint(cfg)  # first: the trained solver config shapes the data
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.check_source()
    solver = instantiate(cfg.solver.module, _convert_="all")
    load_weights(solver, state, path, cfg.solver.name)
    skips = SkipReport()
    trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[RichProgressBar(), skips],
        default_root_dir=cfg.run.dir,
    )
    datamodule.trainer = trainer  # each rank reads its own share of the split
    loader = datamodule.eval_dataloader(cfg.split)
    metrics = trainer.test(solver, dataloaders=loader)[0]
    rows = [{"solver": cfg.solver.name, "dataset": cfg.dataset.name, "split": cfg.split, **metrics}]
    tables = [
        Table(
            "results",
            f"{cfg.solver.name} on {cfg.dataset.name}/{cfg.split}",
            rows,
            f"checkpoint: {cfg.checkpoint}",
        )
    ]
    if hasattr(solver, "evaluation_tables"):
        tables += solver.evaluation_tables()
    if trainer.is_global_zero:
        for table in tables:
            notes = "\n\n".join(filter(None, [table.notes, skip_note(skips.test_skips)]))
            paths = write_tables(table.rows, cfg.run.dir, table.name, table.title, notes)
            print(paths["md"].read_text())
            log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return rows


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry(evaluate, cfg)


if __name__ == "__main__":
    main()
