"""Spleeter conversion against TensorFlow itself (runs where ``tensorflow`` is installed:
``pip install -e .[parity]``, part of ``make test-all``).

Spleeter's graph (``spleeter/model/functions/unet.py`` and ``EstimatorSpecBuilder``'s STFT,
ratio masks, mask extension and inverse STFT) is built here with TensorFlow ops from random
weights stored under Spleeter's variable names, saved as a TF checkpoint, read back without
TensorFlow by :mod:`musicgen.separation.tf_checkpoint`, converted, and both separate the same
waveform. The max abs differences are printed (``-s``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musicgen.separation.spleeter_tf import convert, load_spleeter, preset_config
from musicgen.separation.tf_checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # TensorFlow's import alone takes seconds: make test-all
tf = None  # imported by the fixture below, so that collecting this file imports nothing


@pytest.fixture(autouse=True, scope="module")
def _tensorflow() -> None:
    global tf
    tf = pytest.importorskip(
        "tensorflow", reason="tensorflow is not installed (pip install -e .[parity])"
    )


TINY = {"n_fft": 512, "hop": 128, "freq_bins": 128, "patch_frames": 64, "sample_rate": 44100}
EPSILON = 1e-10


def _name(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}_{index}"


def random_variables(stems: int, channels: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Spleeter's variables for ``stems`` U-Nets (Keras names, TF layouts), random values."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}

    def conv(name: str, shape: tuple[int, ...]) -> None:
        fan_in = np.prod(shape[:2]) * (shape[2] if "transpose" not in name else shape[3])
        out[f"{name}/kernel"] = rng.normal(0, (2 / fan_in) ** 0.5, shape).astype(np.float32)
        out[f"{name}/bias"] = rng.normal(0, 0.05, shape[-2 if "transpose" in name else -1]).astype(
            np.float32
        )

    def norm(name: str, size: int) -> None:
        out[f"{name}/gamma"] = rng.uniform(0.5, 1.5, size).astype(np.float32)
        out[f"{name}/beta"] = rng.normal(0, 0.1, size).astype(np.float32)
        out[f"{name}/moving_mean"] = rng.normal(0, 0.1, size).astype(np.float32)
        out[f"{name}/moving_variance"] = rng.uniform(0.5, 2.0, size).astype(np.float32)

    for s in range(stems):
        ins = [2, *channels[:-1]]
        for level in range(6):
            conv(_name("conv2d", 7 * s + level), (5, 5, ins[level], channels[level]))
            norm(_name("batch_normalization", 12 * s + level), channels[level])
        outs = [*reversed(channels[:5]), 1]
        dec_ins = [channels[5], *(2 * c for c in reversed(channels[:5]))]
        for level in range(6):
            conv(_name("conv2d_transpose", 6 * s + level), (5, 5, outs[level], dec_ins[level]))
            norm(_name("batch_normalization", 12 * s + 6 + level), outs[level])
        conv(_name("conv2d", 7 * s + 6), (4, 4, 1, 2))
    out["global_step"] = np.array(1234, dtype=np.int64)  # also in released checkpoints
    out["conv2d/kernel/Adam"] = np.zeros((5, 5, 2, channels[0]), np.float32)  # optimizer slot
    return out


def save_tf_checkpoint(variables: dict[str, np.ndarray], folder: Path) -> Path:
    """A TF checkpoint as Spleeter's archives hold it: ``checkpoint``, ``model.index``,
    ``model.data-00000-of-00001``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=str(folder / "model"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(variables[n]) for n in names],
    )
    (folder / "checkpoint").write_text(
        'model_checkpoint_path: "model"\nall_model_checkpoint_paths: "model"\n'
    )
    return folder


def tf_unet(x, v: dict, stem: int, conv_act: str, deconv_act: str, logits: bool):
    """``apply_unet`` with TF ops (Keras Conv2D/Conv2DTranspose "same", BatchNormalization in
    inference, eps 1e-3); ``x`` NHWC (patches, T, F, 2)."""
    act = {"ReLU": tf.nn.relu, "ELU": tf.nn.elu}.get(conv_act, lambda h: tf.nn.leaky_relu(h, 0.2))
    dact = {"LeakyReLU": lambda h: tf.nn.leaky_relu(h, 0.2), "ELU": tf.nn.elu}.get(
        deconv_act, tf.nn.relu
    )

    def conv(h, index, strides=2, dilations=1):
        name = _name("conv2d", 7 * stem + index)
        out = tf.nn.conv2d(
            h, v[f"{name}/kernel"], strides=strides, padding="SAME", dilations=dilations
        )
        return out + v[f"{name}/bias"]

    def deconv(h, index):
        name = _name("conv2d_transpose", 6 * stem + index)
        kernel = v[f"{name}/kernel"]
        shape = [tf.shape(h)[0], h.shape[1] * 2, h.shape[2] * 2, kernel.shape[2]]
        return (
            tf.nn.conv2d_transpose(h, kernel, shape, strides=2, padding="SAME") + v[f"{name}/bias"]
        )

    def norm(h, index):
        name = _name("batch_normalization", 12 * stem + index)
        return tf.nn.batch_normalization(
            h,
            v[f"{name}/moving_mean"],
            v[f"{name}/moving_variance"],
            v[f"{name}/beta"],
            v[f"{name}/gamma"],
            1e-3,
        )

    convs, h = [], x
    for level in range(6):
        c = conv(h, level)
        convs.append(c)
        h = act(norm(c, level))
    h = convs[5]
    for level in range(6):
        up = norm(dact(deconv(h, level)), 6 + level)
        h = tf.concat([convs[4 - level], up], axis=-1) if level < 5 else up
    out = conv(h, 6, strides=1, dilations=2)
    return out if logits else tf.sigmoid(out)


def tf_separate(waveform: np.ndarray, v: dict, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """``EstimatorSpecBuilder``'s predict path on ``waveform`` (samples, channels): the stems'
    waveforms ``(S, samples, channels)`` and masks ``(S, frames, bins, channels)``."""
    n_fft, hop, F, T = config["n_fft"], config["hop"], config["freq_bins"], config["patch_frames"]
    stems = config["stems"]

    def window(frame_length: int, dtype):  # Spleeter's window_fn
        return tf.signal.hann_window(frame_length, periodic=True, dtype=dtype)

    wav = tf.concat([tf.zeros((n_fft, waveform.shape[1])), waveform], 0)
    stft = tf.transpose(
        tf.signal.stft(tf.transpose(wav), n_fft, hop, window_fn=window, pad_end=True),
        perm=[1, 2, 0],
    )
    frames = stft.shape[0]
    pad = (T - frames % T) % T
    spec = tf.abs(
        tf.reshape(tf.pad(stft, [[0, pad], [0, 0], [0, 0]]), [-1, T, stft.shape[1], stft.shape[2]])
    )[:, :, :F, :]
    tf_vars = {k: tf.constant(a) for k, a in v.items()}
    softmax = config.get("softmax", False)
    outs = [
        tf_unet(
            spec,
            tf_vars,
            s,
            config.get("conv_activation", ""),
            config.get("deconv_activation", ""),
            softmax,
        )
        for s in range(len(stems))
    ]
    if softmax:
        masks = tf.nn.softmax(tf.stack(outs, axis=4), axis=4)
        outs = [masks[..., s] * spec for s in range(len(stems))]
    else:
        outs = [o * spec for o in outs]
    total = tf.reduce_sum([o**2 for o in outs], axis=0) + EPSILON
    waves, all_masks = [], []
    for o in outs:
        mask = (o**2 + EPSILON / len(outs)) / total
        if config.get("mask_extension", "zeros") == "average":
            row = tf.reduce_mean(mask, axis=2, keepdims=True)
        else:
            row = tf.zeros_like(mask[:, :, :1, :])
        mask = tf.concat([mask, tf.tile(row, [1, 1, n_fft // 2 + 1 - F, 1])], axis=2)
        mask = tf.reshape(mask, [-1, *mask.shape[2:]])[:frames]
        all_masks.append(mask.numpy())
        masked = tf.cast(mask, tf.complex64) * stft
        inv = tf.signal.inverse_stft(
            tf.transpose(masked, perm=[2, 0, 1]), n_fft, hop, window_fn=window
        ) * (2 / 3)
        waves.append(tf.transpose(inv)[n_fft : n_fft + waveform.shape[0]].numpy())
    return np.stack(waves), np.stack(all_masks)


@pytest.mark.parametrize(
    "preset", ["2stems", "4stems", "5stems"], ids=["2stems-unet", "4stems-elu", "5stems-softmax"]
)
def test_converted_tiny_spleeter_equals_tensorflow(tmp_path: Path, preset: str) -> None:
    config = {**preset_config(preset), **TINY}
    channels = [4, 6, 8, 8, 12, 16]
    variables = random_variables(len(config["stems"]), channels, seed=len(preset))
    folder = save_tf_checkpoint(variables, tmp_path / preset)
    read = read_checkpoint(folder)
    for name, array in variables.items():
        np.testing.assert_array_equal(
            read[name], tf.train.load_variable(str(folder / "model"), name)
        )
        np.testing.assert_array_equal(read[name], array)
    model = convert(read, config)
    wave = np.random.default_rng(1).normal(0, 0.3, (20000, 2)).astype(np.float32)
    ref_wave, ref_masks = tf_separate(wave, variables, config)
    with torch.no_grad():
        mix = torch.from_numpy(wave.T.copy())[None]
        ours = model(mix)[0].numpy().transpose(0, 2, 1)  # (S, samples, C)
        spec = model.stft(torch.nn.functional.pad(mix, (model.n_fft, 0)))
        masks = model.unpatch(
            model.ratio_masks(model.estimates(model.patches(spec.abs()))), 1, spec.shape[-1]
        )
        masks = masks[0].numpy().transpose(0, 3, 2, 1)  # (S, frames, bins, C)
    mask_diff, wave_diff = np.abs(masks - ref_masks).max(), np.abs(ours - ref_wave).max()
    print(f"\n{preset} tiny: max |mask diff| {mask_diff:.2e}, max |waveform diff| {wave_diff:.2e}")
    assert mask_diff < 1e-4
    assert wave_diff < 1e-4


def test_converted_full_size_4stems_equals_tensorflow(tmp_path: Path) -> None:
    """The released 4stems architecture at full size (16-512 filters, 512x1024 patches)."""
    config = {
        **preset_config("4stems"),
        "n_fft": 4096,
        "hop": 1024,
        "freq_bins": 1024,
        "patch_frames": 512,
    }
    variables = random_variables(4, [16, 32, 64, 128, 256, 512], seed=7)
    folder = save_tf_checkpoint(variables, tmp_path / "4stems")
    model = load_spleeter(folder)
    wave = np.random.default_rng(2).normal(0, 0.3, (44100 * 4, 2)).astype(np.float32)
    ref_wave, _ = tf_separate(wave, variables, config)
    with torch.no_grad():
        ours = model(torch.from_numpy(wave.T.copy())[None])[0].numpy().transpose(0, 2, 1)
    diff = np.abs(ours - ref_wave).max()
    print(f"\n4stems full size: max |waveform diff| {diff:.2e}")
    assert diff < 1e-3


def test_reader_equals_tensorflow_on_many_variables_and_dtypes(tmp_path: Path) -> None:
    """An index of several SSTable blocks (thousands of names, as a released checkpoint with
    its optimizer slots), every numeric dtype TF writes, scalars, and strings (skipped)."""
    rng = np.random.default_rng(0)
    variables = {
        f"layer_{i}/kernel/Adam_{i % 3}": rng.normal(size=(i % 5 + 1, 3)).astype(np.float32)
        for i in range(3000)
    }
    for dtype in (np.float64, np.float16, np.int32, np.int64, np.int8, np.uint8, np.bool_):
        variables[f"typed/{np.dtype(dtype).name}"] = rng.integers(0, 2, (2, 3, 4)).astype(dtype)
    variables["scalar"] = np.float32(3.5)
    names = sorted(variables)
    tensors = [tf.constant(variables[n]) for n in names] + [tf.constant(b"a string")]
    tf.raw_ops.SaveV2(
        prefix=str(tmp_path / "model"),
        tensor_names=[*names, "zz_string"],
        shape_and_slices=[""] * (len(names) + 1),
        tensors=tensors,
    )
    read = read_checkpoint(tmp_path / "model.index")
    assert sorted(read) == names  # the string variable is skipped
    for name in names:
        expected = tf.train.load_variable(str(tmp_path / "model"), name)
        assert read[name].dtype == expected.dtype and read[name].shape == expected.shape, name
        np.testing.assert_array_equal(read[name], expected)
