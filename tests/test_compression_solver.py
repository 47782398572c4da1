"""CompressionSolver in a Lightning Trainer: it learns on a fixed batch and counts its steps as documented."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from musicgen.errors import UserError
from musicgen.opus import MIN_KBPS
from solvers.compression import PAPER_ROWS, CompressionSolver
from tests.fixtures.repeat import Repeat

RATE = 16000


def fixed_batch() -> dict:
    torch.manual_seed(0)
    t = torch.arange(RATE // 2) / RATE
    tones = [
        0.3 * torch.sin(2 * torch.pi * f * t) * (1 + torch.sin(2 * torch.pi * 3 * t)) / 2
        for f in (220.0, 523.0)
    ]
    return {"audio": torch.stack(tones).unsqueeze(1), "key": ["a", "b"]}


def small_solver(**kwargs) -> CompressionSolver:
    codec = dict(
        sample_rate=RATE,
        ratios=[8, 5, 4, 2],
        n_filters=4,
        dimension=32,
        n_q=4,
        bins=64,
        lstm=0,
        kmeans_iters=2,
    )
    options = dict(
        codebooks=[2, 4], discriminator={"filters": 2}, optim={"lr": 3e-3}, opus_baseline=False
    )
    return CompressionSolver(codec=codec, **{**options, **kwargs})


def fit(solver: CompressionSolver, batch: dict, max_steps: int) -> None:
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    trainer.fit(solver, DataLoader(Repeat(batch), batch_size=None))


def reconstruction_loss(solver: CompressionSolver, audio: torch.Tensor) -> float:
    model = solver.model.eval()
    decoded = model.decode(model.encode(audio, 4), audio.shape[-1])
    model.train()
    return solver.msspec(decoded, audio).item()


def test_training_steps_reduce_the_reconstruction_loss() -> None:
    batch = fixed_batch()
    solver = small_solver(adversarial_warmup=1000)
    fit(solver, batch, max_steps=2)  # one batch: k-means initialises the codebooks
    before = reconstruction_loss(solver, batch["audio"])
    fit(solver, batch, max_steps=62)
    after = reconstruction_loss(solver, batch["audio"])
    assert after < 0.8 * before, (before, after)


def test_global_step_counts_generator_and_discriminator_steps() -> None:
    solver = small_solver(losses={"adv": 4.0, "feat": 4.0, "msspec": 2.0, "l1": 0.1})
    fit(solver, fixed_batch(), max_steps=6)
    assert solver.global_step == 6 and solver.generator_steps == 3
    for optimizer in solver.trainer.optimizers:
        assert {int(s["step"]) for s in optimizer.state.values()} == {3}
    assert set(solver.trainer.callback_metrics) >= {
        "train/adv",
        "train/feat",
        "train/msspec",
        "train/l1",
        "train/d_loss",
        "train/commitment",
        "train/codebook_perplexity",
        "train/codebook_usage",
        "train/dead_codes",
        "train/grad_norm_adv",
        "train/kbps",
    }
    assert solver.balancer.norm_count.tolist() == pytest.approx(
        [sum(0.999**i for i in range(3))] * 4
    )
    ema, model = dict(solver.ema.named_parameters()), dict(solver.model.named_parameters())
    assert all(not p.requires_grad for p in ema.values())
    assert any(not torch.equal(ema[name], model[name]) for name in model)


def test_hyperparameters_hold_the_full_codec_config() -> None:
    solver = small_solver()
    assert solver.hparams["codec"]["pad_mode"] == "constant" and solver.hparams["codec"][
        "ratios"
    ] == [8, 5, 4, 2]
    with pytest.raises(UserError, match="codebooks must be numbers in"):
        small_solver(codebooks=[8])


def test_evaluation_table_has_our_rows_opus_and_the_paper() -> None:
    solver = small_solver(opus_baseline=True)
    fit(solver, fixed_batch(), max_steps=2)
    trainer = L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu"
    )
    trainer.test(solver, DataLoader([fixed_batch()], batch_size=None), verbose=False)
    assert solver.opus_rates() == [MIN_KBPS]
    (table,) = solver.evaluation_tables()
    systems = [row["system"] for row in table.rows]
    assert systems[:3] == ["ours (EMA weights)", "ours (EMA weights)", "Opus (libopus, CBR)"]
    assert table.rows[3:] == PAPER_ROWS
    ours = table.rows[0]
    assert ours["codebooks"] == 2 and ours["kbps"] == pytest.approx(0.6) and ours["items"] == 2
    opus = table.rows[2]
    assert opus["kbps"] == MIN_KBPS and opus["si_snr_db"] > -30 and 0 < opus["mel_distance"] < 5
    assert "Table 3" in table.notes
