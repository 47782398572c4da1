"""``solver=mt3``: training step, whole-piece evaluation, paper tables; train/resume/evaluate end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen.notes import window_notes
from musicgen.transcription import EOS_ID, PAD_ID, segment_tokens, token
from solvers.transcription import (
    MT3Solver,
    crop_rolls,
    init_shifts_from_positions,
    shift_smoothed_nll,
)

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "d_model": 32,
    "num_heads": 2,
    "head_dim": 16,
    "d_ff": 64,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "dropout": 0.0,
}
NOTES = np.asarray(
    [
        [0.5, 1.5, 60, 100, 0, 0, 0, 0],
        [1.0, 3.0, 64, 100, 33, 0, 0, 0],
        [1.2, 1.3, 36, 100, 0, 1, 0, 0],
    ]
)


def solver(**kwargs) -> MT3Solver:
    torch.manual_seed(0)
    optim = {"name": "adamw", "lr": 1e-3, "adamw": {"betas": [0.9, 0.98]}}
    return MT3Solver(model=TINY, optim=optim, max_decode_length=8, **kwargs)


def test_training_step_targets_are_the_crops_tokens() -> None:
    mt3 = solver()
    crop = torch.from_numpy(window_notes(NOTES, 1.1, 1.1 + 2.048, lead=0.02))
    batch = {
        "audio": torch.randn(2, 1, 32768) * 0.1,
        "notes": [crop, torch.from_numpy(NOTES[:0])],
        "start": torch.tensor([1.1, 0.0], dtype=torch.float64),
    }
    targets, skipped = mt3._targets(batch["notes"], batch["start"], 32768)
    expected = segment_tokens(NOTES, 17600, 17600 + 32768)  # the crop's span of the track
    assert skipped == 0 and targets[0, : len(expected)].tolist() == expected.tolist()
    assert token("tie") in expected.tolist()
    assert targets[1, :2].tolist() == [token("tie"), EOS_ID] and targets[1, 2:].eq(PAD_ID).all()
    loss = mt3.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and mt3.model.decoder.logits_dense.weight.grad is not None


def test_roll_targets_and_auxiliary_loss() -> None:
    # NOTES from 1.1 s: the 0.5-1.5 s note sounds from frame 0 (its onset is before the crop),
    # the 1.0-3.0 s note too; the drum hit at 1.2 s is an onset at frame round(0.1 * 125) = 12
    rolls = crop_rolls(NOTES, 1.1, 256)
    assert rolls.shape == (2, 256, 128) and rolls.dtype == np.float32
    assert np.argwhere(rolls[0]).tolist() == [[12, 36]]
    assert np.flatnonzero(rolls[1][:, 60]).tolist() == list(range(0, 50))  # ends at 1.5 s
    assert np.flatnonzero(rolls[1][:, 64]).tolist() == list(range(0, 238))  # ends at 3.0 s
    assert not rolls[1][:, 36].any()  # drums: onsets only
    assert not crop_rolls(NOTES, 10.0, 256).any()
    plain, aux = solver(), solver(roll_loss_weight=1.0)
    assert plain.roll_head is None
    batch = {
        "audio": torch.randn(1, 1, 32768) * 0.1,
        "notes": [torch.from_numpy(NOTES)],
        "start": torch.tensor([1.1], dtype=torch.float64),
    }
    loss = aux.training_step(batch, 0)
    loss.backward()
    assert aux.roll_head.weight.grad.abs().sum() > 0
    assert loss > plain.training_step(batch, 0)  # same weights (seed 0) plus the BCE term
    assert not any(k.startswith("roll_head") for k in aux.model.state_dict())


def test_targets_longer_than_the_limit_are_skipped_not_cut() -> None:
    mt3 = solver(max_target_length=4)
    dense = torch.from_numpy(NOTES)  # its target has more than 4 tokens
    starts = torch.tensor([0.0, 5.0], dtype=torch.float64)
    targets, skipped = mt3._targets([dense, dense], starts, 32768)
    assert skipped == 1
    assert targets[0].eq(PAD_ID).all()  # no loss on it
    assert targets[1].tolist() == [token("tie"), EOS_ID]  # nothing sounds after 5 s
    batch = {"audio": torch.randn(1, 1, 32768), "notes": [dense], "start": starts[:1]}
    assert mt3.training_step(batch, 0).item() == 0.0


def test_whole_piece_evaluation_reports_mt3_metrics() -> None:
    mt3 = solver().eval()
    batch = {
        "audio": torch.randn(2, 1, 40_000) * 0.1,
        "lengths": torch.tensor([40_000, 20_000]),
        "notes": [torch.from_numpy(NOTES), torch.from_numpy(NOTES[:1])],
        "key": ["a", "b"],
    }
    with torch.no_grad():
        mt3.validation_step(batch, 1)
    scores = mt3._finish("valid")
    for name in ("onset_f1", "onset_offset_f1", "frame_f1", "multi_full_f1", "drum_onset_f1"):
        assert 0.0 <= scores[name] <= 1.0
    assert mt3._finish("valid") == {}


def test_paper_tables_carry_published_numbers() -> None:
    mt3 = solver(dataset_name="maestro")
    mt3.test_scores = {
        "onset_f1": 0.5,
        "frame_f1": 0.4,
        "onset_offset_f1": 0.3,
        "multi_full_f1": 0.2,
    }
    table2, table3 = mt3.evaluation_tables()
    onset = next(r for r in table2.rows if r["metric"] == "Onset F1")
    assert onset == {
        "metric": "Onset F1",
        "MT3 (single dataset)": 0.9601,
        "MT3 (mixture)": 0.9455,
        "ours": 0.5,
    }
    assert [r["MT3 (mixture)"] for r in table3.rows] == [0.807, 0.8024, 0.8164]
    assert "MAESTRO" in table2.title
    synth = solver(dataset_name="synth").evaluation_tables()[0]
    assert (
        all(r["MT3 (mixture)"] is None for r in synth.rows)
        and "did not evaluate on synth" in synth.notes
    )


def test_shift_tokens_can_start_at_the_positions_they_name() -> None:
    model = solver().model
    init_shifts_from_positions(model)
    row = model.decoder.logits_dense.weight[token("shift", 100)]
    assert torch.equal(row, model.decoder.positions[125])  # 1.00 s = frame 125 (8 ms frames)
    assert torch.equal(
        model.decoder.token_embedder.weight[token("shift", 4)], model.decoder.positions[5]
    )


def test_shift_smoothing_spreads_only_shift_targets() -> None:
    logits = torch.randn(2, 4, 1536, generator=torch.Generator().manual_seed(0))
    shift = token("shift", 50)
    targets = torch.tensor([[shift, token("pitch", 60), token("shift", 0), EOS_ID], [EOS_ID] * 4])
    one_hot = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    smooth = shift_smoothed_nll(logits, targets, 2.0)
    not_shift = targets < token("shift", 0)
    assert torch.allclose(smooth[not_shift], one_hot[not_shift])
    assert torch.allclose(shift_smoothed_nll(logits, targets, 1e-3), one_hot, atol=1e-5)
    # shift 0: the Gaussian is cut at the range start and renormalised over shifts 0..6
    weights = torch.exp(-0.5 * (torch.arange(7) / 2.0) ** 2)
    log_probs = logits[0, 2].log_softmax(-1)[token("shift", 0) : token("shift", 7)]
    assert torch.allclose(smooth[0, 2], -(weights / weights.sum() * log_probs).sum())
    # a prediction one step late costs less than one five steps late
    near, far = torch.zeros(1, 1, 1536), torch.zeros(1, 1, 1536)
    near[0, 0, shift + 1] = far[0, 0, shift + 5] = 10.0
    at = torch.tensor([[shift]])
    assert shift_smoothed_nll(near, at, 2.0) < shift_smoothed_nll(far, at, 2.0)


def test_optimisers_and_bad_names() -> None:
    mt3 = solver()
    assert isinstance(mt3.configure_optimizers()["optimizer"], torch.optim.AdamW)
    adafactor = MT3Solver(
        TINY,
        {"name": "adafactor", "lr": 1e-3, "warmup_steps": 10, "adafactor": {"beta2_decay": -0.8}},
    )
    config = adafactor.configure_optimizers()
    assert (
        isinstance(config["optimizer"], torch.optim.Adafactor)
        and config["lr_scheduler"]["interval"] == "step"
    )
    with pytest.raises(Exception, match="optim.name"):
        MT3Solver(TINY, {"name": "sgd", "lr": 1.0})


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, *script.split(), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_tiny_preset_trains_resumes_evaluates_and_transcribes(
    toy_dataset: Path, tmp_path: Path
) -> None:
    common = [
        "experiment=mt3_tiny",
        f"dataset.root={toy_dataset}",
        "logger=csv",
        f"paths.runs_dir={tmp_path}",
        "loader.train_batches_per_epoch=2",
        "loader.batch_size=2",
        "loader.num_workers=0",
        "loader.eval_batch_size=1",
        "trainer.limit_val_batches=1",
        "solver.module.max_decode_length=16",
    ]
    run("train.py", *common, "trainer.max_steps=2")
    (run_dir,) = tmp_path.iterdir()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    resumed = run("train.py", *common, "trainer.max_steps=4")
    assert "resuming from" in resumed.stdout + resumed.stderr
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 4 and state["hyper_parameters"]["model"]["d_model"] == 128
    assert list((run_dir / "logs").glob("version_*/media/*.mid"))

    run(
        "evaluate.py",
        "solver=mt3",  # the checkpoint brings its preset (no experiment=)
        f"dataset.root={toy_dataset}",
        f"paths.runs_dir={tmp_path}",
        f"checkpoint={ckpt}",
        "loader.num_workers=0",
        "solver.module.max_decode_length=16",
    )
    (eval_dir,) = (tmp_path / "eval").iterdir()
    rows = json.loads((eval_dir / "results.json").read_text())["rows"]
    assert 0.0 <= rows[0]["test/onset_f1"] <= 1.0
    table2 = json.loads((eval_dir / "mt3_table2.json").read_text())
    assert [r["metric"] for r in table2["rows"]] == ["Frame F1", "Onset F1", "Onset+Offset F1"]
    assert (eval_dir / "mt3_table3.md").is_file()

    audio = np.random.default_rng(0).standard_normal(24_000).astype(np.float32) * 0.1
    sf.write(tmp_path / "in.wav", audio, 16000)
    run(
        "-m musicgen.transcribe",
        str(tmp_path / "in.wav"),
        str(tmp_path / "out.mid"),
        "--checkpoint",
        str(ckpt),
        "--max-length",
        "16",
    )
    assert (tmp_path / "out.mid").is_file()


def test_cosine_schedule_decays_to_zero_at_cosine_steps() -> None:
    optim = {"name": "adamw", "lr": 1e-3, "warmup_steps": 2, "cosine_steps": 10}
    config = MT3Solver(TINY, optim).configure_optimizers()
    schedule = config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(11):
        rates.append(schedule.get_last_lr()[0])
        config["optimizer"].step()
        schedule.step()
    assert rates[0] == 5e-4 and rates[1] == 1e-3 and rates[2] == 1e-3
    assert abs(rates[6] - 5e-4) < 1e-9 and rates[10] == 0.0
