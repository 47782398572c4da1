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
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from musicgen.errors import UserError
from musicgen.notes import window_notes
from musicgen.transcription import (
    EOS_ID,
    NUM_SPECIAL_IDS,
    PAD_ID,
    crop_tokens,
    segment_tokens,
    token,
)
from musicgen.transcription.transcriber import MODEL_TYPES
from solvers.runtime import register_resolvers
from solvers.transcription import (
    PAPER_PIANO,
    MT3Solver,
    crop_rolls,
    init_shifts_from_positions,
    shift_smoothed_nll,
)
from solvers.validate_config import validate_config

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


def test_loss_is_cross_entropy_plus_z_loss_over_real_tokens() -> None:
    mt3 = solver(z_loss=1e-2)
    frames = torch.randn(2, 256, 512)
    targets = torch.tensor([[5, 900, 1, 0], [7, 1, 0, 0]])
    loss, accuracy = mt3._loss(frames, targets)
    inputs = F.pad(targets[:, :-1], (1, 0), value=PAD_ID)
    logits = mt3.model(frames, inputs).double()
    mask = targets != PAD_ID
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    expected = ((nll + 1e-2 * logits.logsumexp(-1).square()) * mask).sum() / mask.sum()
    assert torch.allclose(loss.double(), expected, rtol=1e-5)
    assert accuracy == ((logits.argmax(-1) == targets) & mask).sum() / mask.sum()


@pytest.mark.parametrize("option", ["time_pointer", "frame_input", "pitch_from_frame"])
def test_loss_skips_padding_before_the_vocabulary_projection(option: str) -> None:
    """The loss projects only real targets' positions (``keep``): the same logits there, and
    the same loss, as the full ``(B, L, vocab)`` logits masked afterwards."""
    mt3 = MT3Solver(model={**TINY, option: True}, optim={"name": "adamw", "lr": 1e-3})
    with torch.no_grad():  # the pointer's query and the read-outs start at zero
        for param in mt3.model.parameters():
            param.normal_(0, 0.1)
    frames = torch.randn(2, 256, 512)
    shift = token("shift", 40)
    targets = torch.tensor([[5, shift, 900, shift + 3, 1, 0], [7, shift, 1, 0, 0, 0]])
    inputs = F.pad(targets[:, :-1], (1, 0), value=PAD_ID)
    encoded = mt3.model.encoder(frames)
    mask = targets != PAD_ID
    full = mt3.model.decoder(inputs, encoded)
    assert torch.allclose(mt3.model.decoder(inputs, encoded, keep=mask), full[mask], atol=1e-5)
    loss, accuracy = mt3._loss(frames, targets)
    nll = F.cross_entropy(full.transpose(1, 2), targets, reduction="none")
    expected = ((nll + 1e-4 * full.logsumexp(-1).square()) * mask).sum() / mask.sum()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert accuracy == ((full.argmax(-1) == targets) & mask).sum() / mask.sum()


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
    # 1.00 s is mid-window in frame 117 (8 ms frames of 128 ms windows), not frame 125
    torch.testing.assert_close(row, model.decoder.positions[117], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        model.decoder.token_embedder.weight[token("shift", 8)],
        model.decoder.positions[2],
        rtol=0,
        atol=1e-6,
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
    assert state["hyper_parameters"]["merge_repeats_ms"] == 50  # evaluate.py decodes with it
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


# --- the piano model (model_type ismir2021) ----------------------------------------------------

PIANO = MODEL_TYPES["ismir2021"]


def test_piano_model_type_trains_on_velocity_targets_without_ties() -> None:
    mt3 = solver(model_type="ismir2021")
    assert mt3.model.config.vocab_size == 1664 and mt3.granularity == "flat"
    assert mt3.segment_samples == 512 * 128  # 4.096 s crops
    piano = NOTES[NOTES[:, 5] == 0].copy()
    piano[:, 3] = [70, 33]  # velocities
    starts = torch.tensor([0.0, 1.1], dtype=torch.float64)
    notes = [torch.from_numpy(piano)] * 2
    targets, skipped = mt3._targets(notes, starts, mt3.segment_samples)
    expected = crop_tokens(piano, 1.1, 1.1 + 4.096, "flat", PIANO.codec, ties=False)
    assert skipped == 0 and targets[1, : len(expected)].tolist() == expected.tolist()

    def piano_token(kind: str, value: int) -> int:
        return PIANO.codec.encode_event(kind, value) + NUM_SPECIAL_IDS

    first = targets[0].tolist()
    assert piano_token("velocity", 70) in first and piano_token("velocity", 33) in first
    assert piano_token("tie", 0) not in first + expected.tolist()
    program = PIANO.codec.codec_range("program")
    assert not any(program[0] + 3 <= t <= program[1] + 3 for t in first)  # flat: no programs
    # the crop from 1.1 s opens with the offset of the note begun at 0.5 s: no tie section
    assert expected[:3].tolist() == [
        piano_token("shift", 40),
        piano_token("velocity", 0),
        piano_token("pitch", 60),
    ]
    batch = {"audio": torch.randn(2, 1, mt3.segment_samples) * 0.1, "notes": notes, "start": starts}
    loss = mt3.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and mt3.model.decoder.logits_dense.weight.grad.shape[0] == 1664


def test_piano_whole_piece_evaluation_scores_velocities() -> None:
    mt3 = solver(model_type="ismir2021").eval()
    batch = {
        "audio": torch.randn(1, 1, 70_000) * 0.1,  # two 512-frame segments
        "notes": [torch.from_numpy(NOTES[:1])],
        "key": ["a"],
    }
    with torch.no_grad():
        mt3.validation_step(batch, 1)
    scores = mt3._finish("valid")
    assert 0.0 <= scores["onset_offset_velocity_f1"] <= 1.0 and scores["loss"] > 0


def test_piano_tables_use_the_2021_papers_layout() -> None:
    mt3 = solver(model_type="ismir2021", dataset_name="maestro")
    mt3.test_scores = {
        "onset_f1": 0.5,
        "onset_offset_f1": 0.3,
        "onset_offset_velocity_f1": 0.2,
        "frame_f1": 0.4,
    }
    piano, table2 = mt3.evaluation_tables()
    assert piano.name == "piano_table" and table2.name == "mt3_table2"
    assert [(r["metric"], r["ours"]) for r in piano.rows] == [
        ("Onset F1", 0.5),
        ("Onset+Offset F1", 0.3),
        ("Onset+Offset+Velocity F1", 0.2),
    ]
    assert "2107.09142" in piano.notes and "MAESTRO" in piano.title
    # MAESTRO v3: MT3's Table 2 row for Hawthorne et al. (2021), velocity F1 as quoted
    assert [r["Hawthorne et al. 2021"] for r in piano.rows] == [0.9601, 0.8394, 0.8275]
    assert list(PAPER_PIANO.values()) == [0.9601, 0.8394, 0.8275]
    onset = next(r for r in table2.rows if r["metric"] == "Onset F1")
    assert onset["MT3 (single dataset)"] == 0.9601 and onset["ours"] == 0.5
    other = solver(model_type="ismir2021", dataset_name="synth").evaluation_tables()[0]
    assert "evaluated MAESTRO, not synth" in other.notes
    assert all(r["Hawthorne et al. 2021"] is None for r in other.rows)


def test_piano_model_type_errors() -> None:
    with pytest.raises(UserError, match="model_type 'piano' is unknown"):
        solver(model_type="piano")
    with pytest.raises(UserError, match="smaller than the 1664"):
        MT3Solver(
            {**TINY, "vocab_size": 1536}, {"name": "adamw", "lr": 1e-3}, model_type="ismir2021"
        )


def test_piano_config_derives_crops_from_the_model_type() -> None:
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        piano = compose("train", ["solver=mt3", "solver.module.model_type=ismir2021"])
        preset = compose("train", ["experiment=mt3_piano_tiny"])
        mismatch = compose(
            "train",
            [
                "solver=mt3",
                "solver.module.model_type=ismir2021",
                "solver.data.segment_seconds=2.048",
            ],
        )
    validate_config(piano)
    assert piano.solver.data.segment_seconds == 4.096 and piano.solver.module.granularity is None
    assert preset.dataset.name == "maestro" and preset.solver.data.segment_seconds == 4.096
    assert preset.solver.module.constrained_decoding is True
    with pytest.raises(UserError, match="set it to 4.096"):
        validate_config(mismatch)


@pytest.fixture
def maestro_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The miniature MAESTRO copy with 5 s performances (a 4.096 s piano crop must fit),
    prepared into shards by ``python -m data.prepare maestro``."""
    import dataclasses

    import tests.fixtures.maestro as maestro

    longer = tuple(dataclasses.replace(p, seconds=5.0) for p in maestro.PERFORMANCES)
    monkeypatch.setattr(maestro, "PERFORMANCES", longer)
    source = maestro.write_maestro_copy(tmp_path / "maestro-v3.0.0")
    out = tmp_path / "maestro"
    run("-m data.prepare maestro", "--root", str(source), "--out", str(out))
    return out


@pytest.mark.slow
def test_piano_preset_trains_evaluates_and_transcribes_on_maestro(
    maestro_shards: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    run(
        "train.py",
        "experiment=mt3_piano_tiny",
        f"dataset.root={maestro_shards}",
        "logger=csv",
        f"paths.runs_dir={runs}",
        "loader.train_batches_per_epoch=2",
        "loader.batch_size=2",
        "loader.num_workers=0",
        "loader.eval_batch_size=1",
        "trainer.limit_val_batches=1",
        "solver.module.max_decode_length=16",
        "trainer.max_steps=2",
    )
    (run_dir,) = runs.iterdir()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 2 and state["hyper_parameters"]["model_type"] == "ismir2021"
    assert state["state_dict"]["model.decoder.logits_dense.weight"].shape[0] == 1664

    run(
        "evaluate.py",
        "solver=mt3",
        f"checkpoint={ckpt}",
        "dataset=maestro",
        f"dataset.root={maestro_shards}",
        f"paths.runs_dir={runs}",
        "loader.num_workers=0",
        "solver.module.max_decode_length=16",
    )
    (eval_dir,) = (runs / "eval").iterdir()
    piano = json.loads((eval_dir / "piano_table.json").read_text())
    assert [r["metric"] for r in piano["rows"]] == [
        "Onset F1",
        "Onset+Offset F1",
        "Onset+Offset+Velocity F1",
    ]
    assert all(0.0 <= r["ours"] <= 1.0 for r in piano["rows"])
    rows = json.loads((eval_dir / "results.json").read_text())["rows"]
    assert 0.0 <= rows[0]["test/onset_offset_velocity_f1"] <= 1.0
    assert (eval_dir / "mt3_table2.md").is_file() and not (eval_dir / "mt3_table3.md").exists()

    audio = np.random.default_rng(0).standard_normal(24_000).astype(np.float32) * 0.1
    sf.write(tmp_path / "in.wav", audio, 16000)
    out = run(
        "-m musicgen.transcribe",
        str(tmp_path / "in.wav"),
        str(tmp_path / "out.mid"),
        "--checkpoint",
        str(ckpt),
        "--max-length",
        "16",
    )
    assert (tmp_path / "out.mid").is_file(), out.stdout
