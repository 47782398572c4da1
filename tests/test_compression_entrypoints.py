"""train.py / evaluate.py with solver=compression on the toy dataset: resume and the evaluation table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from evaluate import restore_checkpoint
from musicgen.compression import CompressionModel
from musicgen.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# The tiny preset at the toy dataset's rate (3 s items: evaluate 2 s crops), small batches.
TOY = [
    "experiment=compression_tiny",
    "solver.data.sample_rate=16000",
    "solver.data.eval_segment_seconds=2.0",
    "loader.batch_size=2",
    "loader.num_workers=0",
    "loader.train_batches_per_epoch=4",
]


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, script, *overrides], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def adam_steps(ckpt: dict) -> list[int]:
    return [
        sorted({int(s["step"]) for s in opt["state"].values()})[0]
        for opt in ckpt["optimizer_states"]
    ]


def test_train_resume_and_evaluate(toy_dataset: Path, tmp_path: Path) -> None:
    common = [
        f"dataset.root={toy_dataset}",
        "logger=csv",
        "trainer=debug",
        f"paths.runs_dir={tmp_path}",
        *TOY,
    ]
    run("train.py", *common, "trainer.max_steps=4")
    (run_dir,) = tmp_path.iterdir()
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == 4 and adam_steps(first) == [
        2,
        2,
    ]  # 2 generator + 2 discriminator steps

    result = run("train.py", *common, "trainer.max_steps=8")
    assert "resuming from" in result.stdout + result.stderr
    second = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert second["global_step"] == 8 and adam_steps(second) == [4, 4]
    assert (
        second["state_dict"]["balancer.norm_count"][-1]
        > first["state_dict"]["balancer.norm_count"][-1]
    )

    model = CompressionModel.from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert (model.sample_rate, model.num_codebooks) == (16000, 12)
    ema = {k[len("ema.") :]: v for k, v in second["state_dict"].items() if k.startswith("ema.")}
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())

    # The command form: the checkpoint brings its solver config (no experiment=).
    run(
        "evaluate.py",
        "solver=compression",
        f"dataset.root={toy_dataset}",
        f"paths.runs_dir={tmp_path}",
        f"checkpoint={run_dir}/checkpoints/last.ckpt",
        "loader.num_workers=0",
    )
    (eval_dir,) = (tmp_path / "eval").iterdir()
    table = json.loads((eval_dir / "compression.json").read_text())
    systems = [row["system"] for row in table["rows"]]
    assert (
        systems.count("ours (EMA weights)") == 3
        and "Opus (libopus, CBR)" in systems
        and "Opus (paper)" in systems
    )
    assert all(row["items"] == 4 for row in table["rows"] if "items" in row)
    assert "| Opus (libopus, CBR) |" in (eval_dir / "compression.md").read_text()
    results = json.loads((eval_dir / "results.json").read_text())["rows"][0]
    assert {"test/sisnr", "test/mel", "test/sisnr_q12", "test/mel_q3"} <= set(results)


def test_evaluate_refuses_what_does_not_fit_the_checkpoint(
    toy_dataset: Path, tmp_path: Path
) -> None:
    """Another solver's name, a model-shape override, a damaged file or no checkpoint at all:
    one error line and exit 2, before any evaluation."""
    common = [f"dataset.root={toy_dataset}", f"paths.runs_dir={tmp_path}", *TOY]
    run("train.py", *common, "logger=csv", "trainer=debug", "trainer.max_steps=1")
    (run_dir,) = tmp_path.iterdir()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(ckpt.read_bytes()[:5000])
    # Through the command line: a mismatch found in the checkpoint's config, and one in its weights.
    cases = [
        (["solver=mt3", f"checkpoint={ckpt}"], "trained with solver=compression"),
        (
            ["solver=compression", "solver.module.codec.dimension=32", f"checkpoint={ckpt}"],
            "does not fit the model",
        ),
    ]
    for args, message in cases:
        result = subprocess.run(
            [sys.executable, "evaluate.py", f"dataset.root={toy_dataset}", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
        assert "weights_only=False" not in result.stderr
    # The checkpoint itself, checked before anything else (same code path, in this process).
    files = {
        f"checkpoint={damaged}": "cannot be read",
        f"checkpoint={tmp_path}/none.ckpt": "does not exist",
        "checkpoint=": "no checkpoint given",
        "": "no checkpoint given",
    }
    for override, message in files.items():
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides=["solver=compression", *filter(None, [override])])
        with pytest.raises(UserError, match=message) as caught:
            restore_checkpoint(cfg)
        assert "weights_only" not in str(caught.value)
