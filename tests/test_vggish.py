"""VGGish port: the log-mel front end against a numpy re-statement of TF's ``mel_features``, the
example framing, and the network loaded from random weights saved in the published key layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musicgen.errors import UserError
from musicgen.metrics import vggish
from musicgen.metrics.embeddings import VGGishEmbedder, build_embedder

# ---------------------------------------------------------------------------------------------
# Reference: TF's audioset/mel_features.py + vggish_input.py, written from their description.


def tf_frames(data: np.ndarray, window: int, hop: int) -> np.ndarray:
    count = 1 + (data.shape[0] - window) // hop
    return np.stack([data[i * hop : i * hop + window] for i in range(max(count, 0))])


def tf_mel_matrix(n_mels: int, n_bins: int, rate: float, low: float, high: float) -> np.ndarray:
    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    bins_mel = mel(np.linspace(0.0, rate / 2.0, n_bins))
    edges = np.linspace(mel(low), mel(high), n_mels + 2)
    matrix = np.empty((n_bins, n_mels))
    for i in range(n_mels):
        lo, center, up = edges[i : i + 3]
        for j in range(n_bins):
            rising = (bins_mel[j] - lo) / (center - lo)
            falling = (up - bins_mel[j]) / (up - center)
            matrix[j, i] = max(0.0, min(rising, falling))
    matrix[0, :] = 0.0
    return matrix


def tf_log_mel(data: np.ndarray) -> np.ndarray:
    window_length, hop_length = int(round(16000 * 0.025)), int(round(16000 * 0.010))
    fft_length = 2 ** int(np.ceil(np.log(window_length) / np.log(2.0)))
    hann = 0.5 - 0.5 * np.cos(2 * np.pi / window_length * np.arange(window_length))  # periodic
    spectrogram = np.abs(np.fft.rfft(tf_frames(data, window_length, hop_length) * hann, fft_length))
    mel = spectrogram @ tf_mel_matrix(64, spectrogram.shape[1], 16000, 125.0, 7500.0)
    return np.log(mel + 0.01)


def tf_examples(data: np.ndarray) -> np.ndarray:
    return tf_frames(tf_log_mel(data), 96, 96)


# ---------------------------------------------------------------------------------------------


def test_front_end_matches_the_tf_algorithm() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(40000) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    expected = tf_log_mel(audio)
    ours = vggish.LogMelFrontEnd()(torch.from_numpy(audio))
    assert ours.dtype == torch.float64 and ours.shape == expected.shape == (
        1 + (40000 - 400) // 160,
        64,
    )
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-9)
    ours32 = vggish.LogMelFrontEnd()(torch.from_numpy(audio).float())
    np.testing.assert_allclose(ours32.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_mel_matrix_matches_the_tf_matrix() -> None:
    np.testing.assert_allclose(
        vggish.mel_matrix().numpy(), tf_mel_matrix(64, 257, 16000, 125.0, 7500.0), atol=1e-12
    )


@pytest.mark.parametrize("samples", [399, 400, 15599, 15600, 31000, 48000, 160000])
def test_example_counts_follow_tf_framing(samples: int) -> None:
    audio = np.random.default_rng(samples).standard_normal(samples) * 0.1
    frames = max(0, 1 + (samples - 400) // 160) if samples >= 400 else 0
    expected_count = 0 if frames < 96 else 1 + (frames - 96) // 96
    examples = vggish.waveform_to_examples(torch.from_numpy(audio).float(), 16000)
    assert examples.shape == (expected_count, 96, 64)
    if expected_count:
        np.testing.assert_allclose(examples.numpy(), tf_examples(audio), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("samples", "windows"), [(15999, 0), (16000, 1), (23999, 1), (24000, 2), (80000, 9)]
)
def test_fad_framing_uses_1s_windows_with_half_second_hop(samples: int, windows: int) -> None:
    audio = torch.randn(samples) * 0.1
    embedder = VGGishEmbedder(torch.nn.Identity(), framing="fad")  # framing needs no network
    examples = embedder.examples(audio, 16000)
    assert examples.shape == (windows, 96, 64)
    for i in range(windows):  # each window's one example: the first 96 frames of that second
        window = audio[i * 8000 : i * 8000 + 16000].double().numpy()
        np.testing.assert_allclose(
            examples[i].numpy(), tf_log_mel(window)[:96], rtol=1e-4, atol=1e-4
        )


def test_other_rates_and_stereo_are_resampled_and_downmixed() -> None:
    stereo = torch.randn(2, 44100 * 2) * 0.1
    examples = vggish.waveform_to_examples(stereo, 44100)
    assert examples.shape == (2, 96, 64)  # 2 s at 16 kHz: 198 frames -> 2 examples
    mono = vggish.waveform_to_examples(stereo.mean(dim=0), 44100)
    torch.testing.assert_close(examples, mono)


# ---------------------------------------------------------------------------------------------
# Network: random weights in the layout of the published vggish-10086976.pth.

PORT_LAYOUT = {
    "features.0": (64, 1), "features.3": (128, 64), "features.6": (256, 128),
    "features.8": (256, 256), "features.11": (512, 256), "features.13": (512, 512),
    "embeddings.0": (4096, 12288), "embeddings.2": (4096, 4096), "embeddings.4": (128, 4096),
}  # fmt: skip


def random_port_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (out, inp) in PORT_LAYOUT.items():
        shape = (out, inp, 3, 3) if name.startswith("features") else (out, inp)
        fan_in = inp * (9 if name.startswith("features") else 1)
        state[f"{name}.weight"] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        state[f"{name}.bias"] = torch.randn(out, generator=gen) * 0.01
    return state


def reference_forward(state: dict[str, torch.Tensor], examples: torch.Tensor) -> torch.Tensor:
    """VGGish by hand: NCHW convs and pools, then TF's NHWC flatten into fc 4096-4096-128."""
    x = examples[:, None]
    for block in (
        ("features.0",),
        ("features.3",),
        ("features.6", "features.8"),
        ("features.11", "features.13"),
    ):
        for name in block:
            x = F.relu(F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"], padding=1))
        x = F.max_pool2d(x, 2)
    n, c, h, w = x.shape
    x = torch.stack([x[:, ch, i, j] for i in range(h) for j in range(w) for ch in range(c)], dim=1)
    x = F.relu(F.linear(x, state["embeddings.0.weight"], state["embeddings.0.bias"]))
    x = F.relu(F.linear(x, state["embeddings.2.weight"], state["embeddings.2.bias"]))
    return F.linear(x, state["embeddings.4.weight"], state["embeddings.4.bias"])


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vggish")
    torch.save(random_port_state(), root / vggish.WEIGHTS_FILE)
    gen = np.random.default_rng(1)
    pca = {
        "pca_eigen_vectors": gen.standard_normal((128, 128)) * 0.1,
        "pca_means": gen.standard_normal((128, 1)),
    }
    torch.save(pca, root / vggish.PCA_FILE)  # numpy arrays, as in the published file
    np.savez(root / "vggish_pca_params.npz", **pca)
    return root


def test_loads_the_port_layout_and_matches_a_hand_written_forward(weights_dir: Path) -> None:
    model = vggish.load_vggish(weights_dir)
    examples = vggish.waveform_to_examples(torch.randn(16000 * 3) * 0.1, 16000)
    with torch.no_grad():
        out = model(examples)
        expected = reference_forward(random_port_state(), examples)
    assert out.shape == (3, 128)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert (out < 0).any()  # the TF embedding layer is linear
    relu = vggish.load_vggish(weights_dir / vggish.WEIGHTS_FILE, final_relu=True)
    with torch.no_grad():
        torch.testing.assert_close(relu(examples), expected.clamp(min=0), rtol=1e-4, atol=1e-4)


def test_postprocessor_matches_tf_quantisation(weights_dir: Path) -> None:
    params = np.load(weights_dir / "vggish_pca_params.npz")
    emb = torch.randn(5, 128)
    pca_applied = (params["pca_eigen_vectors"] @ (emb.double().numpy().T - params["pca_means"])).T
    expected = ((np.clip(pca_applied, -2.0, 2.0) + 2.0) * (255.0 / 4.0)).astype(np.uint8)
    for path in (weights_dir / vggish.PCA_FILE, weights_dir / "vggish_pca_params.npz"):
        quantised = vggish.load_pca(path)(emb)
        diff = np.abs(quantised.numpy().astype(int) - expected.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 vs float64 at bin edges


def test_build_embedder_gives_n_by_128_and_pca_bytes(weights_dir: Path) -> None:
    audio = torch.randn(1, 44100 * 3) * 0.1
    embedder = build_embedder(
        "vggish", weights_dir, pca=weights_dir / vggish.PCA_FILE, framing="fad"
    )
    assert embedder.name == "vggish (fad framing, PCA)"
    out = embedder.embed(audio, 44100)
    assert out.shape == (5, 128) and out.min() >= 0 and out.max() <= 255
    assert torch.equal(out, out.round())
    plain = VGGishEmbedder(embedder.model)
    assert plain.embed(audio, 44100).shape == (3, 128)
    assert plain.embed(torch.randn(8000), 16000).shape == (0, 128)


def test_missing_or_wrong_weights_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs weights: download .*vggish-10086976.pth"):
        build_embedder("vggish", None)
    with pytest.raises(UserError, match="vggish-10086976.pth does not exist: download"):
        build_embedder("vggish", tmp_path)
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, bad)
    with pytest.raises(UserError, match="not a VGGish state dict"):
        vggish.load_vggish(bad)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        vggish.load_vggish(tmp_path / "garbage.pth")
    with pytest.raises(UserError, match="does not exist"):
        vggish.load_pca(tmp_path / "nope.pth")
