"""``scripts/mt3_diagnose.py``: the onset-error breakdown of an MT3 checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from musicgen.transcription.model import MT3Config, MT3Model
from musicgen.transcription.transcriber import Transcriber

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import mt3_diagnose as diag  # noqa: E402


def notes(*rows: tuple[float, float, int]) -> np.ndarray:
    """Pitched notes (start, end, pitch) of program 0, velocity 100."""
    return np.asarray([(s, e, p, 100, 0, 0, 0, 0) for s, e, p in rows], dtype=np.float64)


REF = notes((0.10, 0.5, 60), (1.00, 1.4, 64), (2.20, 2.6, 67), (3.00, 3.5, 72))


def test_a_constant_early_bias_shows_in_the_onset_errors() -> None:
    est = REF.copy()
    est[:, :2] -= 0.06
    pairs = diag.match_onsets(REF, est, 0.2)
    assert len(pairs) == 4 and diag.match_onsets(REF, est, 0.05) == []
    errors = np.asarray([1000 * (est[j, 0] - REF[i, 0]) for i, j in pairs])
    where = diag.eighths(REF[:, 0], 2.048)
    summary = diag.summarise_errors(errors, where)
    assert summary["mean"] == pytest.approx(-60) and summary["median"] == pytest.approx(-60)
    assert where.tolist() == [0, 3, 0, 3]  # 2.2 s and 3.0 s lie 0.152 s and 0.952 s in
    assert summary["mean_per_eighth"] == [-60.0, None, None, -60.0, None, None, None, None]


def test_repeats_pitch_errors_and_any_pitch_matches() -> None:
    est = notes((0.11, 0.2, 60), (0.13, 0.5, 60), (1.01, 1.4, 76), (2.21, 2.6, 68))
    assert diag.duplicates(est) == 1
    assert diag.pitch_errors(REF, est) == {
        "octave": 1,
        "semitone": 1,
        "other_pitch": 0,
        "no_onset_near": 1,
    }
    assert len(diag.match_onsets(REF, est, 0.05, any_pitch=True)) == 3


def test_the_oracle_decodes_the_reference_back() -> None:
    track = notes((0.10, 0.5, 60), (1.90, 2.5, 64), (2.20, 4.3, 67), (4.0, 4.01, 72))
    back = diag.oracle_notes(track, 3)
    assert np.abs(back[:, :3] - track[:, :3]).max() < 0.006


def test_main_reports_every_part(toy_dataset: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    cfg = MT3Config(d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1)
    exported = Transcriber(MT3Model(cfg)).save(tmp_path / "model")
    diag.main([str(exported), "--root", str(toy_dataset), "--max-length", "24"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["oracle"]["onset_f1"] > 0.99
    assert 0 <= result["metrics"]["onset_f1"] <= 1
    assert result["ref_notes"] == sum(result["ref_per_eighth"]) > 0
    assert set(result["pitch_errors"]) == {"octave", "semitone", "other_pitch", "no_onset_near"}
    assert result["teacher_forced_shift_steps"]["targets"] > 0


def test_a_missing_dataset_is_one_error_line(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    cfg = MT3Config(d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1)
    exported = Transcriber(MT3Model(cfg)).save(tmp_path / "model")
    with pytest.raises(SystemExit) as exit_info:
        diag.main([str(exported), "--root", str(tmp_path / "none")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: no ")


def test_shift_shares_count_non_shift_guesses_as_misses() -> None:
    summary = diag.summarise_shifts([0, 0, -3, 7, None])
    assert summary["non_shift_argmax"] == 1
    assert (summary["exact"], summary["within_5"]) == (0.4, 0.6)
    assert summary["mean"] == 1.0 and summary["median"] == 0.0
