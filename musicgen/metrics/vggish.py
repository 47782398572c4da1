"""VGGish (Hershey et al., 2017) in PyTorch: the TF reference's log-mel front end and network.

Front end, as ``vggish_input``/``mel_features`` of ``tensorflow/models/research/audioset``:
16 kHz mono, 25 ms periodic-Hann frames (400 samples) every 10 ms (160), |rfft| of 512 points,
64 HTK-mel bands of 125-7500 Hz (triangles in mel space, the DC bin zeroed), ``log(mel + 0.01)``,
cut into examples of 96 frames (0.96 s). Inputs at another rate are resampled with torchaudio
(TF uses resampy). ``hop_frames`` sets the example hop: 96 (non-overlapping, TF) by default.

Network: conv 64 / 128 / 256x2 / 512x2 with 2x2 max-pools, fc 4096-4096-128. The state-dict
layout is that of the widely used PyTorch port (``harritaylor/torchvggish``), so its published
``vggish-10086976.pth`` loads as it is (``features.{0,3,6,8,11,13}``, ``embeddings.{0,2,4}``);
``vggish_pca_params-970ea276.pth`` (or Google's ``vggish_pca_params.npz``) holds the optional
postprocessor (PCA whitening + 8-bit quantisation of the AudioSet release). The embedding layer
is linear as in the current TF model; ``final_relu=True`` gives the port's (older) ReLU output.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from musicgen.audio import convert_audio
from musicgen.errors import UserError

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512  # next power of two of the window
N_MELS = 64
F_MIN, F_MAX = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EMBEDDING_DIM = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
WEIGHTS_FILE = "vggish-10086976.pth"
PCA_FILE = "vggish_pca_params-970ea276.pth"
WEIGHTS_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale with the natural log: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * torch.log1p(hz / 700.0)


def mel_matrix(
    n_freqs: int = N_FFT // 2 + 1,
    n_mels: int = N_MELS,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> torch.Tensor:
    """``(n_freqs, n_mels)`` float64: mel-space triangles on ``n_mels + 2`` equally spaced edges."""
    bins_mel = hz_to_mel(torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64))
    edges = torch.linspace(
        *hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64)).tolist(),
        n_mels + 2,
        dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.minimum(rising, falling).clamp(min=0.0)
    weights[0] = 0.0  # the DC bin never contributes
    return weights


class LogMelFrontEnd(nn.Module):
    """``(T,)`` 16 kHz mono audio -> ``(frames, 64)`` log-mel, ``frames = 1 + (T - 400) // 160``."""

    def __init__(self) -> None:
        super().__init__()
        n = torch.arange(WINDOW, dtype=torch.float64)
        self.register_buffer(
            "window", 0.5 - 0.5 * torch.cos(2 * math.pi * n / WINDOW), persistent=False
        )
        self.register_buffer("mel", mel_matrix(), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 1:
            raise ValueError(f"expected mono audio of shape (time,), got {tuple(wav.shape)}")
        if wav.shape[0] < WINDOW:
            return wav.new_zeros(0, N_MELS)
        frames = wav.double().unfold(0, WINDOW, HOP) * self.window
        magnitude = torch.fft.rfft(frames, n=N_FFT).abs()
        return torch.log(magnitude @ self.mel + LOG_OFFSET).to(wav.dtype)


def frame_examples(log_mel: torch.Tensor, hop_frames: int = EXAMPLE_FRAMES) -> torch.Tensor:
    """``(frames, 64)`` -> ``(N, 96, 64)``, one example every ``hop_frames`` frames."""
    if log_mel.shape[0] < EXAMPLE_FRAMES:
        return log_mel.new_zeros(0, EXAMPLE_FRAMES, log_mel.shape[1])
    return log_mel.unfold(0, EXAMPLE_FRAMES, hop_frames).transpose(1, 2)


def waveform_to_examples(
    wav: torch.Tensor, sample_rate: int, hop_frames: int = EXAMPLE_FRAMES
) -> torch.Tensor:
    """``(C, T)`` or ``(T,)`` audio at any rate -> ``(N, 96, 64)`` VGGish input examples."""
    wav = wav if wav.dim() == 2 else wav.reshape(1, -1)
    mono = convert_audio(wav.float(), sample_rate, SAMPLE_RATE, 1)[0]
    return frame_examples(LogMelFrontEnd().to(mono.device)(mono), hop_frames)


class VGGish(nn.Module):
    """``(N, 96, 64)`` log-mel examples -> ``(N, 128)`` embeddings (torchvggish key layout)."""

    def __init__(self, final_relu: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for block in ((64,), (128,), (256, 256), (512, 512)):
            for width in block:
                layers += [
                    nn.Conv2d(channels, width, kernel_size=3, padding=1),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM),
            *([nn.ReLU(inplace=True)] if final_relu else []),
        )

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        if examples.dim() == 3:
            examples = examples.unsqueeze(1)
        x = self.features(examples)  # (N, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # TF flattens NHWC
        return self.embeddings(x)


class Postprocessor(nn.Module):
    """PCA whitening, clipping to [-2, 2], 8-bit quantisation (0..255 as floats), as in TF."""

    def __init__(self, pca_matrix: torch.Tensor, pca_means: torch.Tensor) -> None:
        super().__init__()
        if pca_matrix.shape != (EMBEDDING_DIM, EMBEDDING_DIM) or pca_means.numel() != EMBEDDING_DIM:
            raise ValueError(
                f"bad PCA parameter shapes {tuple(pca_matrix.shape)} / {tuple(pca_means.shape)}"
            )
        self.register_buffer("pca_matrix", pca_matrix.float())
        self.register_buffer("pca_means", pca_means.float().reshape(EMBEDDING_DIM))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        whitened = (emb - self.pca_means) @ self.pca_matrix.T
        clipped = whitened.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        # TF casts to uint8, truncating (the torchvggish port rounds instead)
        return torch.floor((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


def _numpy_safe_globals() -> list:
    """What a pickled numpy array needs under ``weights_only=True`` (numpy 1 and 2 module names)."""
    try:  # numpy 2 renamed numpy.core; numpy 1.26 has a partial numpy._core without the attribute
        from numpy._core.multiarray import _reconstruct as reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct as reconstruct
    return [
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *{type(np.dtype(t)) for t in ("float32", "float64")},
    ]


def _torch_load(path: Path) -> dict:
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch reports bad files through many exception types
        raise UserError(f"cannot read {path} ({type(err).__name__}): download it again") from err
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict: download it again")
    return state


def _tensor(value: object) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))


def load_pca(path: str | Path) -> Postprocessor:
    """The postprocessor in ``vggish_pca_params-970ea276.pth`` or ``vggish_pca_params.npz``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: download {WEIGHTS_URL}{PCA_FILE}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            params = {key: data[key] for key in data.files}
    else:
        params = _torch_load(path)
    try:
        return Postprocessor(_tensor(params["pca_eigen_vectors"]), _tensor(params["pca_means"]))
    except (KeyError, ValueError) as err:
        raise UserError(
            f"{path} is not a VGGish PCA file ({err}): download {WEIGHTS_URL}{PCA_FILE}"
        ) from err


def load_vggish(path: str | Path, final_relu: bool = False) -> VGGish:
    """VGGish with the published port's weights from a local file or its folder, in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist: download {WEIGHTS_URL}{WEIGHTS_FILE}")
    model = VGGish(final_relu)
    state = {
        key: _tensor(value)
        for key, value in _torch_load(path).items()
        if not key.startswith("pproc.")  # the port's full model also carries the PCA parameters
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path} is not a VGGish state dict (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}): download {WEIGHTS_URL}{WEIGHTS_FILE}"
        )
    return model.eval()
