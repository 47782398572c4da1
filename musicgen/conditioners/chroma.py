"""Chromagram of a waveform, as MusicGen-Melody's condition (AudioCraft's ChromaExtractor).

A power spectrogram (Hann window ``winlen``, FFT size ``winlen``, hop ``hop``, centred frames,
reflect padding, normalised by the window energy) is mapped to ``n_chroma`` pitch classes by
``librosa.filters.chroma`` (tuning 0), each frame is normalised (``norm``, default the max) and,
with ``argmax``, replaced by the one-hot vector of its strongest pitch class. Bin 0 is C.
"""

from __future__ import annotations

import math

import librosa.filters
import torch
from torch import nn


class ChromaExtractor(nn.Module):
    """``forward(wav (B, C, T) or (B, T)) -> chroma (B, F, n_chroma)`` with F = T // hop + 1.

    Channels are averaged to mono first. Inputs shorter than one window are zero-padded on both
    sides to ``winlen`` samples. The filterbank and window are non-persistent buffers, so the
    extractor adds nothing to a checkpoint.
    """

    def __init__(
        self,
        sample_rate: int,
        n_chroma: int = 12,
        winlen: int = 2**14,
        hop: int = 2**12,
        argmax: bool = True,
        norm: float = math.inf,
    ) -> None:
        super().__init__()
        if winlen <= 0 or hop <= 0:
            raise ValueError(f"winlen and hop must be positive, got {winlen} and {hop}")
        self.sample_rate, self.n_chroma = sample_rate, n_chroma
        self.winlen, self.hop, self.argmax, self.norm = winlen, hop, argmax, norm
        fbank = librosa.filters.chroma(sr=sample_rate, n_fft=winlen, tuning=0.0, n_chroma=n_chroma)
        self.register_buffer("fbank", torch.from_numpy(fbank).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(winlen), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Chroma frames of ``num_samples`` audio samples."""
        return max(num_samples, self.winlen) // self.hop + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() == 3:
            wav = wav.mean(dim=1)
        if wav.dim() != 2:
            raise ValueError(f"expected audio (B, C, T) or (B, T), got {tuple(wav.shape)}")
        wav = wav.float()
        short = self.winlen - wav.shape[-1]
        if short > 0:
            wav = nn.functional.pad(wav, (short // 2, short - short // 2))
        with torch.autocast(wav.device.type, enabled=False):
            spec = torch.stft(
                wav,
                n_fft=self.winlen,
                hop_length=self.hop,
                window=self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            power = spec.abs().pow(2) / self.window.pow(2).sum()
            chroma = torch.einsum("cf,bft->btc", self.fbank, power)
            chroma = nn.functional.normalize(chroma, p=self.norm, dim=-1, eps=1e-6)
        if self.argmax:
            chroma = nn.functional.one_hot(chroma.argmax(-1), self.n_chroma).to(chroma.dtype)
        return chroma
