"""Small audio utilities shared by datasets, solvers and metrics (pure PyTorch)."""

from __future__ import annotations

import torch
import torchaudio.functional as AF


def convert_audio(
    wav: torch.Tensor, from_rate: int, to_rate: int, to_channels: int
) -> torch.Tensor:
    """Resample ``wav`` of shape ``(C, T)`` and convert it to ``to_channels`` channels.

    Mono is the mean of the channels; stereo from mono duplicates the channel. Any other
    conversion is an error.
    """
    if wav.dim() != 2:
        raise ValueError(f"expected audio of shape (channels, time), got {tuple(wav.shape)}")
    channels = wav.shape[0]
    if channels != to_channels:
        if to_channels == 1:
            wav = wav.mean(dim=0, keepdim=True)
        elif channels == 1:
            wav = wav.expand(to_channels, -1).contiguous()
        else:
            raise ValueError(f"cannot convert {channels}-channel audio to {to_channels} channels")
    if from_rate != to_rate:
        wav = AF.resample(wav, from_rate, to_rate)
    return wav


def fit_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    """Trim or zero-pad the last dimension of ``wav`` to exactly ``length`` samples."""
    if wav.shape[-1] >= length:
        return wav[..., :length]
    return torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))


def loop_to_length(x: torch.Tensor, length: int, dim: int = -1) -> torch.Tensor:
    """Crop ``x`` to ``length`` along ``dim``, or repeat it along ``dim`` until it is that long."""
    size = x.shape[dim]
    if size == 0:
        raise ValueError(f"cannot loop an empty tensor to {length} along dim {dim}")
    repeats = [1] * x.dim()
    repeats[dim] = -(-length // size)
    return x.repeat(*repeats).narrow(dim, 0, length)
