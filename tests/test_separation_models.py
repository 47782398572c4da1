"""Separation models (musicgen/separation): Spleeter's STFT/masks, shapes and losses, training
steps, checkpoint round trips, windowed separation against ``demucs.apply.apply_model`` and the
augmentations against ``demucs.augment``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from demucs import augment as demucs_augment
from demucs.apply import apply_model

from musicgen.errors import UserError
from musicgen.separation import augment, build_separator
from musicgen.separation.apply import separate
from musicgen.separation.checkpoint import load_separator
from musicgen.separation.htdemucs import HTDemucsSeparator
from musicgen.separation.spleeter_tf import convert, load_spleeter
from musicgen.separation.tf_checkpoint import read_checkpoint
from tests.fixtures.separation import (
    tiny_htdemucs_separator,
    tiny_spleeter,
    write_demucs_repo,
    write_separator_checkpoint,
)

SPLEETER_TF = Path(__file__).parent / "fixtures" / "spleeter_tf"


def test_spleeter_stft_patches_and_inverse() -> None:
    model = tiny_spleeter()
    wav = torch.randn(2, 2, 5000)
    padded = torch.nn.functional.pad(wav, (model.n_fft, 0))
    spec = model.stft(padded)
    frames = -(-padded.shape[-1] // model.hop)
    assert spec.shape == (2, 2, model.n_fft // 2 + 1, frames)
    patches = model.patches(spec.abs())
    count = -(-frames // model.patch_frames)
    assert patches.shape == (2 * count, 2, model.patch_frames, model.freq_bins)
    back = model.unpatch(patches, 2, frames)
    torch.testing.assert_close(back, spec.abs()[:, :, : model.freq_bins])
    # TF's inverse_stft without window normalisation, times 2/3, inverts the padded STFT
    torch.testing.assert_close(
        model.istft(spec)[..., model.n_fft : model.n_fft + 5000], wav, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("extension", ["average", "zeros"])
def test_ratio_masks_sum_to_one_and_stems_to_the_mix(extension: str) -> None:
    model = tiny_spleeter(mask_extension=extension)
    estimates = torch.rand(3, 4, 2, model.patch_frames, model.freq_bins)
    estimates[0] = 0  # silence: every stem gets 1/S
    masks = model.ratio_masks(estimates)
    assert masks.shape == (3, 4, 2, model.patch_frames, model.n_fft // 2 + 1)
    total = masks.sum(dim=1)
    torch.testing.assert_close(total[..., : model.freq_bins], torch.ones_like(total[..., :128]))
    expected_above = 1.0 if extension == "average" else 0.0
    torch.testing.assert_close(
        total[..., model.freq_bins :], torch.full_like(total[..., 128:], expected_above)
    )
    torch.testing.assert_close(masks[0], torch.full_like(masks[0], 0.25)[..., :] * (masks[0] > 0))
    mix = torch.randn(2, 2, 3000) * 0.3
    with torch.no_grad():
        stems = model(mix)
    assert stems.shape == (2, 4, 2, 3000)
    if extension == "average":
        torch.testing.assert_close(stems.sum(dim=1), mix, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["spleeter", "htdemucs"])
def test_training_steps_lower_the_loss_on_a_fixed_batch(kind: str) -> None:
    torch.manual_seed(0)
    model = tiny_spleeter() if kind == "spleeter" else tiny_htdemucs_separator()
    rate = model.sample_rate
    length = 4096 if kind == "spleeter" else rate
    t = torch.arange(length) / rate
    stems = torch.stack([0.3 * torch.sin(2 * torch.pi * f * t) for f in (60, 220, 700, 1900)])
    stems = (
        stems[None, :, None].expand(2, -1, 2, -1) * torch.tensor([1.0, 0.5])[:, None, None, None]
    )
    stems = stems + 0.01 * torch.randn_like(stems)
    mix = stems.sum(dim=1)
    model.train()
    assert model(mix).shape == stems.shape
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = model.training_loss(mix, stems)
        assert loss.dim() == 0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("kind", ["spleeter", "htdemucs"])
def test_checkpoint_round_trip_gives_identical_separations(tmp_path: Path, kind: str) -> None:
    model = tiny_spleeter(seed=3) if kind == "spleeter" else tiny_htdemucs_separator()
    path = write_separator_checkpoint(model, tmp_path / "last.ckpt")
    loaded = load_separator(path)
    assert loaded.config == model.config and loaded.stems == model.stems
    assert type(build_separator(json.loads(json.dumps(model.config)))) is type(model)
    mix = torch.randn(2, model.sample_rate * 3) * 0.2
    with torch.no_grad():
        assert torch.equal(
            separate(loaded, mix, model.sample_rate), separate(model, mix, model.sample_rate)
        )


def test_checkpoint_of_another_solver_or_without_a_separator_is_refused(tmp_path: Path) -> None:
    model = tiny_spleeter()
    with pytest.raises(UserError, match="solver=mt3"):
        load_separator(write_separator_checkpoint(model, tmp_path / "a.ckpt", solver="mt3"))
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "b.ckpt")
    with pytest.raises(UserError, match="not a separation checkpoint"):
        load_separator(tmp_path / "b.ckpt")
    with pytest.raises(UserError, match="does not exist"):
        load_separator(tmp_path / "missing.ckpt")


def test_demucs_repo_model_separates_as_apply_model(tmp_path: Path) -> None:
    """``load_separator("htdemucs", model_dir=repo)`` through ``demucs.pretrained.get_model``,
    then :func:`separate` against ``apply_model(shifts=0)`` on the same network: 4 windows of
    1 s, the last one short."""
    model = load_separator("htdemucs", model_dir=write_demucs_repo(tmp_path / "demucs"))
    assert (
        model.stems == ("drums", "bass", "other", "vocals") and model.config["kind"] == "htdemucs"
    )
    assert isinstance(model, HTDemucsSeparator)
    mix = torch.randn(1, 2, int(8000 * 3.3)) * 0.3
    expected = apply_model(model.model, mix, shifts=0, split=True, overlap=0.25)
    torch.testing.assert_close(separate(model, mix, 8000), expected, atol=1e-6, rtol=0)
    other = separate(model, mix[0, :1, :5000], 11025)  # other rate and channel count
    assert other.shape == (1, 4, 1, 5000) and other.isfinite().all()
    with pytest.raises(UserError, match="not in"):
        load_separator("htdemucs_ft", model_dir=tmp_path / "demucs")


def test_demucs_bag_separates_as_apply_model(tmp_path: Path) -> None:
    """A bag of two HTDemucs with per-source weights (as ``htdemucs_ft``): the weighted mean
    equals ``apply_model`` on the ``BagOfModels`` that ``demucs.pretrained`` loads."""
    from musicgen.conditioners.stemmers import _load_from_repo

    weights = [[1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 0.5, 1.0]]
    repo = write_demucs_repo(tmp_path, "htdemucs_ft", ("00000001", "00000002"), weights)
    model = load_separator("htdemucs_ft", model_dir=repo)
    assert model.config["kind"] == "htdemucs_bag" and len(model.models) == 2
    mix = torch.randn(1, 2, int(8000 * 1.7)) * 0.3
    expected = apply_model(_load_from_repo("htdemucs_ft", repo), mix, shifts=0)
    torch.testing.assert_close(separate(model, mix, 8000), expected, atol=1e-6, rtol=0)
    path = write_separator_checkpoint(model, tmp_path / "bag.ckpt")
    torch.testing.assert_close(
        separate(load_separator(path), mix, 8000), expected, atol=1e-6, rtol=0
    )


def test_spleeter_names_and_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown Spleeter model"):
        load_separator("spleeter:7stems", model_dir=tmp_path)
    with pytest.raises(UserError, match="not in"):
        load_separator("spleeter:4stems", model_dir=tmp_path)


def test_spleeter_tf_fixture_converts_to_tensorflows_output() -> None:
    """A checkpoint written by TensorFlow 2.21 and TensorFlow's separation of a fixed input,
    read and converted without TensorFlow. Made with tests/test_spleeter_tf.py's helpers
    (``tf`` set to the module): ``random_variables(2, [4, 4, 4, 4, 8, 8], seed=11)``,
    ``save_tf_checkpoint``, and ``tf_separate`` of ``normal(0, 0.3)`` noise (1500 x 2, numpy
    seed 12) with config.json (2stems, the TINY sizes)."""
    expected = np.load(SPLEETER_TF / "expected.npz")
    config = json.loads((SPLEETER_TF / "config.json").read_text())
    assert load_spleeter(SPLEETER_TF).stems == ("vocals", "accompaniment")  # 2 U-Nets found
    model = convert(read_checkpoint(SPLEETER_TF), config)
    with torch.no_grad():
        ours = model(torch.from_numpy(expected["mix"].T.copy())[None])[0]
    np.testing.assert_allclose(ours.numpy().transpose(0, 2, 1), expected["stems"], atol=1e-5)


def test_augmentations_equal_demucs_on_the_same_draws() -> None:
    stems = torch.randn(8, 4, 2, 600)
    modules = {
        "shift": (demucs_augment.Shift(100), lambda x, g: augment.shift(x, 100, g)),
        "channels": (demucs_augment.FlipChannels(), augment.flip_channels),
        "sign": (demucs_augment.FlipSign(), augment.flip_sign),
        "scale": (demucs_augment.Scale(), augment.scale),
        "remix": (demucs_augment.Remix(), augment.remix),
    }
    for name, (module, ours) in modules.items():
        torch.manual_seed(5)
        expected = module.train()(stems.clone())
        got = ours(stems.clone(), torch.Generator().manual_seed(5))
        assert torch.equal(got, expected), name
    torch.manual_seed(9)
    chain = stems.clone()
    for module in (demucs_augment.Shift(100), demucs_augment.FlipChannels(), demucs_augment.FlipSign(),
                   demucs_augment.Scale(), demucs_augment.Remix()):  # fmt: skip
        chain = module.train()(chain)
    got = augment.augment(stems.clone(), torch.Generator().manual_seed(9), shift_samples=100)
    assert torch.equal(got, chain)
    assert not torch.equal(got, stems[..., :500])
