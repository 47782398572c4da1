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
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig

from musicgen.errors import UserError
from musicgen.tables import Table, write_tables
from solvers.runtime import build_datamodule, register_resolvers, run_entry

log = logging.getLogger("evaluate")
register_resolvers()


def load_solver(cfg: DictConfig) -> L.LightningModule:
    """Instantiate the configured solver and load the checkpoint's weights into it."""
    path = Path(cfg.checkpoint)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist: pass checkpoint=<run dir>/checkpoints/last.ckpt"
        )
    solver = instantiate(cfg.solver.module, _convert_="all")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in state:
        raise UserError(f"{path} is not a Lightning checkpoint of train.py (no state_dict)")
    solver.load_state_dict(state["state_dict"])
    return solver


def evaluate(cfg: DictConfig) -> list[dict]:
    """Run the test loop of the solver on ``cfg.split``; returns the table rows written."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.check_source()
    solver = load_solver(cfg)
    trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[RichProgressBar()], default_root_dir=cfg.run.dir
    )
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
            paths = write_tables(table.rows, cfg.run.dir, table.name, table.title, table.notes)
            print(paths["md"].read_text())
            log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return rows


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry(evaluate, cfg)


if __name__ == "__main__":
    main()
