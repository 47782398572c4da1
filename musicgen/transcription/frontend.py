"""MT3's log-mel front end (magenta/mt3 ``spectrograms.py`` + the ``compute_logmel`` it calls).

A track at 16 kHz is first padded to whole 128-sample frames the way MT3 pads it: up to the
next multiple of 128, adding a whole frame of zeros when it already is a multiple, so a track
of ``n`` samples has ``n // 128 + 1`` frames. Frames are grouped into segments of 256
(32768 samples); each segment's spectrogram is computed from that segment's samples alone:

* STFT with a periodic Hann window of 2048 samples, hop 128, no centring; the end is
  zero-padded so that ``ceil(samples / 128)`` frames come out (``tf.signal.stft`` with
  ``pad_end=True``);
* magnitude, then ``tf.signal.linear_to_mel_weight_matrix``: 512 triangular filters with
  edges evenly spaced on the HTK mel scale (``1127 ln(1 + f / 700)``) from 20 to 7600 Hz,
  slopes linear in mel (not Hz), no area normalisation, the DC bin left out;
* natural log, with values ``<= 0`` replaced by ``1e-5`` first (ddsp's ``safe_log``, which
  MT3 uses: small positive values are *not* raised to the floor).

A segment shorter than 256 frames (the last one) is padded with all-zero frames *after* the
log, as MT3's feature converter pads its inputs. The filterbank is computed in float64 and
stored as float32 (TensorFlow builds it in float32).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from musicgen.transcription.segments import (
    HOP_LENGTH,
    SAMPLE_RATE,
    SEGMENT_FRAMES,
    num_segments,
)

FFT_SIZE = 2048
NUM_MEL_BINS = 512
MEL_LO_HZ = 20.0
MEL_HI_HZ = 7600.0
LOG_FLOOR = 1e-5


def track_frames(num_samples: int) -> int:
    """Frames MT3 cuts a 16 kHz track of ``num_samples`` into (``num_samples // 128 + 1``)."""
    return num_samples // HOP_LENGTH + 1


def hertz_to_mel(hertz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale, as ``tf.signal``: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * torch.log1p(hertz / 700.0)


def mel_filterbank(
    num_mel_bins: int = NUM_MEL_BINS,
    fft_size: int = FFT_SIZE,
    sample_rate: int = SAMPLE_RATE,
    lo_hz: float = MEL_LO_HZ,
    hi_hz: float = MEL_HI_HZ,
) -> torch.Tensor:
    """``(fft_size // 2 + 1, num_mel_bins)`` weights of ``tf.signal.linear_to_mel_weight_matrix``."""
    bins = fft_size // 2 + 1
    freqs = torch.linspace(0.0, sample_rate / 2, bins, dtype=torch.float64)[1:]  # DC left out
    mel = hertz_to_mel(freqs)[:, None]
    edges = torch.linspace(
        float(hertz_to_mel(torch.tensor(lo_hz, dtype=torch.float64))),
        float(hertz_to_mel(torch.tensor(hi_hz, dtype=torch.float64))),
        num_mel_bins + 2,
        dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (mel - lower) / (center - lower)
    falling = (upper - mel) / (upper - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return F.pad(weights, (0, 0, 1, 0)).to(torch.float32)


def split_track(
    samples: torch.Tensor, segment_frames: int = SEGMENT_FRAMES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a mono 16 kHz track ``(N,)`` into zero-padded segments ``(S, segment_frames * 128)``
    (MT3: 256 frames, the ISMIR 2021 piano model: 512) and the number of real frames of each
    ``(S,)``, with MT3's padding rule (see the module docstring)."""
    if samples.dim() != 1:
        raise ValueError(f"expected a mono track of shape (samples,), got {tuple(samples.shape)}")
    frames = track_frames(samples.shape[0])
    segments = num_segments(frames, segment_frames)
    length = segment_frames * HOP_LENGTH
    padded = F.pad(samples, (0, segments * length - samples.shape[0]))
    starts = torch.arange(segments) * segment_frames
    return padded.view(segments, length), torch.clamp(frames - starts, max=segment_frames)


class LogMelFrontend(nn.Module):
    """Segments of samples ``(B, N)`` -> log-mel frames ``(B, ceil(N / 128), 512)``.

    With ``num_frames`` (``(B,)``), frames from ``num_frames[b]`` on are set to zero (MT3's
    input padding). The window and filterbank are non-persistent buffers: checkpoints hold
    only the model's weights.
    """

    def __init__(self, num_mel_bins: int = NUM_MEL_BINS) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(FFT_SIZE, periodic=True), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(num_mel_bins), persistent=False)
        self._sparse_filterbank: torch.Tensor | None = None

    def _to_mel(self, spec: torch.Tensor) -> torch.Tensor:
        """``(B, T, bins)`` magnitudes -> ``(B, T, mels)``. On CPU through a sparse copy of the
        filterbank (each FFT bin feeds at most two filters: ~3x faster than the dense product)."""
        if spec.device.type != "cpu":
            return spec @ self.filterbank
        if self._sparse_filterbank is None:
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                self._sparse_filterbank = self.filterbank.t().to_sparse_csr()
        batch, frames, bins = spec.shape
        mel = self._sparse_filterbank @ spec.reshape(batch * frames, bins).t()
        return mel.t().reshape(batch, frames, -1)

    def forward(
        self, samples: torch.Tensor, num_frames: torch.Tensor | None = None
    ) -> torch.Tensor:
        with torch.autocast(samples.device.type, enabled=False):  # keep the front end in fp32
            return self._log_mel(samples.float(), num_frames)

    def _log_mel(self, samples: torch.Tensor, num_frames: torch.Tensor | None) -> torch.Tensor:
        length = samples.shape[-1]
        frames = math.ceil(length / HOP_LENGTH)
        padded = F.pad(samples, (0, (frames - 1) * HOP_LENGTH + FFT_SIZE - length))
        windows = padded.reshape(-1, padded.shape[-1]).unfold(-1, FFT_SIZE, HOP_LENGTH)
        spectrum = torch.fft.rfft(windows * self.window)
        # |z| as sqrt(re^2 + im^2): ~3x faster on CPU than complex abs (which rescales like hypot)
        magnitude = (spectrum.real.square() + spectrum.imag.square()).sqrt_()
        mel = self._to_mel(magnitude)
        logmel = mel.masked_fill_(mel <= 0, LOG_FLOOR).log_()
        logmel = logmel.reshape(*samples.shape[:-1], frames, -1)
        if num_frames is not None:
            keep = (
                torch.arange(frames, device=logmel.device) < num_frames.to(logmel.device)[:, None]
            )
            logmel = logmel * keep[..., None]
        return logmel
