"""SDR (museval / BSS Eval v4) and uSDR (MDX challenge) of musicgen.metrics.separation on signals
whose scores are known, against museval and demucs themselves."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import museval
import numpy as np
import pytest
import torch

from musicgen.metrics.separation import (
    dataset_sdr,
    dataset_usdr,
    framewise_sdr,
    track_sdr,
    track_usdr,
)

RATE = 8000
SECONDS = 3


@pytest.fixture(scope="module")
def references() -> np.ndarray:
    """Two stereo stems ``(S, C, T)``: noise and a chord."""
    rng = np.random.default_rng(0)
    t = np.arange(SECONDS * RATE) / RATE
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 330.0)) / 3
    stems = [0.3 * rng.standard_normal(t.size), 0.5 * chord]
    return np.stack([np.stack([s, 0.8 * s]) for s in stems])


def demucs_new_sdr():
    """demucs.evaluate.new_sdr, taken from demucs' own source (its module imports dora, which
    demucs' inference install lacks)."""
    source = Path(importlib.util.find_spec("demucs").origin).with_name("evaluate.py").read_text()
    node = next(n for n in ast.parse(source).body if getattr(n, "name", None) == "new_sdr")
    namespace = {"th": torch}
    exec(compile(ast.Module([node], type_ignores=[]), "demucs/evaluate.py", "exec"), namespace)
    return namespace["new_sdr"]


def museval_frames(refs: np.ndarray, ests: np.ndarray) -> np.ndarray:
    return museval.evaluate(refs.transpose(0, 2, 1), ests.transpose(0, 2, 1), win=RATE, hop=RATE)[0]


def test_scaled_copy_scores_the_gain_error(references: np.ndarray) -> None:
    gains = np.array([0.5, 0.9])[:, None, None]
    frames = framewise_sdr(references, references * gains, RATE)
    expected = -20 * np.log10(np.abs(1 - gains[:, 0, 0]))  # 6.02 and 20 dB
    assert frames.shape == (2, SECONDS)
    np.testing.assert_allclose(frames, np.repeat(expected[:, None], SECONDS, 1), atol=1e-6)
    np.testing.assert_allclose(track_sdr(references, references * gains, RATE), expected, atol=1e-6)


@pytest.mark.slow
def test_delayed_copy_equals_museval(references: np.ndarray) -> None:
    delayed = np.roll(references, 40, axis=-1)
    ours = track_sdr(references, delayed, RATE)
    np.testing.assert_allclose(ours, np.nanmedian(museval_frames(references, delayed), axis=1))
    assert (ours < 3).all()  # v4 images SDR is not delay-invariant: a 5 ms delay is an error


def test_noise_at_a_known_snr(references: np.ndarray) -> None:
    snr_db = 12.5
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(references.shape)
    windows = references.reshape(2, 2, SECONDS, RATE)
    noise = noise.reshape(2, 2, SECONDS, RATE)
    # per stem and window, noise scaled to exactly snr_db below the reference
    scale = np.sqrt(
        np.square(windows).sum(axis=(1, 3), keepdims=True)
        / np.square(noise).sum(axis=(1, 3), keepdims=True)
        / 10 ** (snr_db / 10)
    )
    estimates = (windows + scale * noise).reshape(references.shape)
    ours = track_sdr(references, estimates, RATE)
    np.testing.assert_allclose(ours, snr_db, atol=1e-6)


def test_silent_windows_joint_and_per_stem(references: np.ndarray) -> None:
    refs = np.concatenate([references[:, :1], references[:1, 1:]])  # three mono stems
    refs[2, :, : 2 * RATE] = 0  # the third absent for 2 s
    ests = refs + 0.05 * np.random.default_rng(2).standard_normal(refs.shape)
    joint = framewise_sdr(refs, ests, RATE)
    alone = framewise_sdr(refs, ests, RATE, joint=False)
    np.testing.assert_array_equal(joint, museval_frames(refs, ests))
    assert np.isnan(joint[:, :2]).all()  # museval: any silent reference silences the window
    assert np.isfinite(alone[:2, :2]).all() and np.isnan(alone[2, :2]).all()
    np.testing.assert_allclose(alone[:, 2:], joint[:, 2:])
    refs[2] = 0  # absent throughout: museval itself refuses the track
    with pytest.raises(ValueError, match="non-silent"):
        museval_frames(refs, ests)
    assert np.isnan(track_sdr(refs, ests, RATE)).all()
    per_stem = track_sdr(refs, ests, RATE, joint=False)
    np.testing.assert_allclose(per_stem[:2], np.nanmedian(alone[:2], axis=1))
    assert np.isnan(per_stem[2])


def test_usdr_equals_demucs_new_sdr(references: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    estimates = references + 0.1 * rng.standard_normal(references.shape)
    theirs = demucs_new_sdr()(
        torch.from_numpy(references[None]), torch.from_numpy(estimates[None])
    )[0]
    np.testing.assert_allclose(track_usdr(references, estimates), theirs.numpy(), rtol=1e-10)
    gains = np.array([0.5, 1.1])[:, None, None]
    np.testing.assert_allclose(
        track_usdr(references, references * gains), -20 * np.log10(np.abs(1 - gains[:, 0, 0]))
    )
    silent = references.copy()
    silent[1] = 0
    assert np.isnan(track_usdr(silent, estimates)[1])


def test_dataset_reductions() -> None:
    tracks = [
        np.array([1.0, np.nan, 3.0]),
        np.array([2.0, 5.0, np.nan]),
        np.array([9.0, 7.0, np.nan]),
    ]
    np.testing.assert_allclose(dataset_sdr(tracks), [2.0, 6.0, 3.0])
    np.testing.assert_allclose(dataset_usdr(tracks), [4.0, 6.0, 3.0])
    assert np.isnan(dataset_sdr([np.array([np.nan, 1.0])])[0])
    with pytest.raises(ValueError):
        track_usdr(np.zeros((2, 1, 4)), np.zeros((2, 1, 5)))
