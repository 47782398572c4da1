"""Spleeter's separator (deezer/spleeter) in PyTorch: one U-Net per stem on the magnitude STFT.

Front end as ``spleeter.model.EstimatorSpecBuilder``: ``n_fft`` zeros are put before the
waveform, the STFT (periodic Hann window, no centring, zero padding at the end so every sample
is in a frame) is cut into ``patch_frames``-frame patches (the last one zero-padded) and the
lowest ``freq_bins`` bins of its magnitude are the U-Nets' input ``(patches, C, T, F)``.

Each U-Net (``spleeter/model/functions/unet.py``): six 5x5 stride-2 convolutions with TF "same"
padding (the extra row/column after), batch norm and the conv activation; six 5x5 stride-2
transposed convolutions cropped as TF's "same", each followed by the deconv activation and batch
norm (50 % dropout after the first three), concatenated with the matching encoder convolution's
raw output; a 4x4 dilated convolution gives a sigmoid mask per audio channel (``softmax``: the
logits of all stems go through a softmax over stems, ``unet.softmax_unet`` of the 5-stem
model). A stem's estimated magnitude is its mask times the mix magnitude.

Inference (``_build_masks`` + ``_build_manual_output_waveform``): ratio masks
``(est_s^p + eps/S) / (sum_k est_k^p + eps)`` (``p = separation_exponent``), bins above
``freq_bins`` set to 0 (``mask_extension="zeros"``) or to the mask's mean over frequency
(``"average"``), multiplied with the mix STFT (its phase kept), inverse STFT as TF's
``inverse_stft`` (irfft, window, overlap-add, no window normalisation) times 2/3, and the
leading ``n_fft`` samples dropped. Spleeter's 6th encoder batch norm and activation feed
nothing in its graph and are left out here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPSILON = 1e-10  # EstimatorSpecBuilder.EPSILON
WINDOW_COMPENSATION = 2.0 / 3.0  # EstimatorSpecBuilder.WINDOW_COMPENSATION_FACTOR
BN_EPS = 1e-3  # Keras BatchNormalization defaults
BN_MOMENTUM = 0.01  # 1 - Keras' 0.99
DEFAULT_CHANNELS = (16, 32, 64, 128, 256, 512)

# The released models' configurations (spleeter/resources/{2,4,5}stems.json).
PRESETS: dict[str, dict] = {
    "2stems": {"stems": ["vocals", "accompaniment"]},
    "4stems": {
        "stems": ["vocals", "drums", "bass", "other"],
        "conv_activation": "ELU",
        "deconv_activation": "ELU",
    },
    "5stems": {
        "stems": ["vocals", "piano", "drums", "bass", "other"],
        "conv_activation": "ELU",
        "deconv_activation": "ELU",
        "softmax": True,
    },
}


def _conv_activation(name: str) -> nn.Module:
    return {"ReLU": nn.ReLU(), "ELU": nn.ELU()}.get(name, nn.LeakyReLU(0.2))


def _deconv_activation(name: str) -> nn.Module:
    return {"LeakyReLU": nn.LeakyReLU(0.2), "ELU": nn.ELU()}.get(name, nn.ReLU())


def _pad_same(x: torch.Tensor, kernel: int, stride: int, dilation: int = 1) -> torch.Tensor:
    """TF "same" padding of the last two dims (the odd extra sample goes after)."""
    reach = (kernel - 1) * dilation + 1
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + reach - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class UNet(nn.Module):
    """One stem's U-Net: ``(N, C, T, F)`` magnitudes -> mask (sigmoid) or mask logits."""

    def __init__(
        self,
        channels: tuple[int, ...] = DEFAULT_CHANNELS,
        audio_channels: int = 2,
        conv_activation: str = "LeakyReLU",
        deconv_activation: str = "ReLU",
        logits: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != 6:
            raise ValueError(f"Spleeter's U-Net has 6 levels, got channels={list(channels)}")
        ins = (audio_channels, *channels[:-1])
        self.encoder = nn.ModuleList(
            nn.Conv2d(i, o, 5, stride=2) for i, o in zip(ins, channels, strict=True)
        )
        self.encoder_norm = nn.ModuleList(
            nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM) for c in channels[:5]
        )
        outs = (*reversed(channels[:5]), 1)
        dec_ins = (channels[5], *(2 * c for c in reversed(channels[:5])))
        self.decoder = nn.ModuleList(
            nn.ConvTranspose2d(i, o, 5, stride=2) for i, o in zip(dec_ins, outs, strict=True)
        )
        self.decoder_norm = nn.ModuleList(
            nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM) for c in outs
        )
        self.dropout = nn.Dropout(0.5)
        self.mask = nn.Conv2d(1, audio_channels, 4, dilation=2)
        self.conv_act = _conv_activation(conv_activation)
        self.deconv_act = _deconv_activation(deconv_activation)
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, conv in enumerate(self.encoder):
            out = conv(_pad_same(x, 5, 2))
            skips.append(out)
            if level < 5:
                x = self.conv_act(self.encoder_norm[level](out))
        x = skips[-1]
        for level, deconv in enumerate(self.decoder):
            height, width = 2 * x.shape[-2], 2 * x.shape[-1]
            up = deconv(x)[..., 1 : 1 + height, 1 : 1 + width]  # TF "same": 1 before, 2 after
            up = self.decoder_norm[level](self.deconv_act(up))
            if level < 3:
                up = self.dropout(up)
            x = torch.cat([skips[4 - level], up], dim=1) if level < 5 else up
        out = self.mask(_pad_same(x, 4, 1, dilation=2))
        return out if self.logits else torch.sigmoid(out)


class SpleeterSeparator(nn.Module):
    """Spleeter: ``forward`` maps a waveform ``(B, C, T)`` to stems ``(B, S, C, T)``."""

    def __init__(
        self,
        stems: list[str] | tuple[str, ...] = ("vocals", "accompaniment"),
        channels: tuple[int, ...] | list[int] = DEFAULT_CHANNELS,
        n_fft: int = 4096,
        hop: int = 1024,
        freq_bins: int = 1024,
        patch_frames: int = 512,
        sample_rate: int = 44100,
        audio_channels: int = 2,
        conv_activation: str = "LeakyReLU",
        deconv_activation: str = "ReLU",
        softmax: bool = False,
        mask_extension: str = "zeros",
        separation_exponent: float = 2.0,
    ) -> None:
        super().__init__()
        if freq_bins > n_fft // 2 + 1 or freq_bins % 64 or patch_frames % 64:
            raise ValueError(
                f"freq_bins ({freq_bins}) and patch_frames ({patch_frames}) must be multiples of "
                f"64 and freq_bins at most n_fft // 2 + 1 ({n_fft // 2 + 1})"
            )
        if mask_extension not in ("zeros", "average"):
            raise ValueError(f"mask_extension must be 'zeros' or 'average', not {mask_extension!r}")
        self.stems = tuple(stems)
        self.sample_rate, self.audio_channels = int(sample_rate), int(audio_channels)
        self.n_fft, self.hop, self.freq_bins, self.patch_frames = (
            n_fft,
            hop,
            freq_bins,
            patch_frames,
        )
        self.softmax, self.mask_extension = softmax, mask_extension
        self.separation_exponent = separation_exponent
        self.config = {
            "kind": "spleeter",
            "stems": list(self.stems),
            "channels": list(channels),
            "n_fft": n_fft,
            "hop": hop,
            "freq_bins": freq_bins,
            "patch_frames": patch_frames,
            "sample_rate": self.sample_rate,
            "audio_channels": self.audio_channels,
            "conv_activation": conv_activation,
            "deconv_activation": deconv_activation,
            "softmax": softmax,
            "mask_extension": mask_extension,
            "separation_exponent": separation_exponent,
        }
        self.unets = nn.ModuleList(
            UNet(tuple(channels), audio_channels, conv_activation, deconv_activation, softmax)
            for _ in self.stems
        )
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    @property
    def segment_samples(self) -> int:
        """The longest input whose padded STFT fills exactly one patch."""
        return (self.patch_frames - self.n_fft // self.hop) * self.hop

    def valid_length(self, length: int) -> int:
        return length

    def stft(self, wav: torch.Tensor) -> torch.Tensor:
        """TF's ``stft(pad_end=True)`` of ``(..., T)``: ``(..., bins, frames)`` complex."""
        length = wav.shape[-1]
        frames = max(-(-length // self.hop), 1)
        wav = F.pad(wav, (0, (frames - 1) * self.hop + self.n_fft - length))
        flat = wav.reshape(-1, wav.shape[-1])
        spec = torch.stft(
            flat, self.n_fft, self.hop, window=self.window, center=False, return_complex=True
        )
        return spec.reshape(*wav.shape[:-1], *spec.shape[-2:])

    def istft(self, spec: torch.Tensor) -> torch.Tensor:
        """TF's ``inverse_stft`` (no window normalisation) times 2/3: ``(..., bins, frames)``."""
        frames = torch.fft.irfft(spec.transpose(-1, -2), n=self.n_fft) * self.window
        lead, count = frames.shape[:-2], frames.shape[-2]
        length = (count - 1) * self.hop + self.n_fft
        out = F.fold(
            frames.reshape(-1, count, self.n_fft).transpose(1, 2),
            output_size=(1, length),
            kernel_size=(1, self.n_fft),
            stride=(1, self.hop),
        )
        return out.reshape(*lead, length) * WINDOW_COMPENSATION

    def patches(self, magnitude: torch.Tensor) -> torch.Tensor:
        """``(B, C, bins, frames)`` -> ``(B * P, C, patch_frames, freq_bins)``."""
        batch, channels, _, frames = magnitude.shape
        count = max(-(-frames // self.patch_frames), 1)
        mag = F.pad(magnitude[:, :, : self.freq_bins], (0, count * self.patch_frames - frames))
        mag = mag.reshape(batch, channels, self.freq_bins, count, self.patch_frames)
        return mag.permute(0, 3, 1, 4, 2).reshape(
            batch * count, channels, self.patch_frames, self.freq_bins
        )

    def unpatch(self, x: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """Inverse of :meth:`patches` for ``(B * P, ..., C, T, F)`` -> ``(B, ..., C, F, frames)``."""
        count = x.shape[0] // batch
        x = x.reshape(batch, count, *x.shape[1:]).movedim(1, -3)  # (B, ..., C, P, T, F)
        x = x.flatten(-3, -2)[..., :frames, :]
        return x.transpose(-1, -2)

    def estimates(self, patches: torch.Tensor) -> torch.Tensor:
        """Each stem's estimated magnitude (mask times mix): ``(N, S, C, T, F)``."""
        masks = torch.stack([unet(patches) for unet in self.unets], dim=1)
        if self.softmax:
            masks = masks.softmax(dim=1)
        return masks * patches.unsqueeze(1)

    def ratio_masks(self, estimates: torch.Tensor) -> torch.Tensor:
        """Spleeter's soft masks over all ``n_fft // 2 + 1`` bins: ``(N, S, C, T, bins)``."""
        power = estimates**self.separation_exponent
        total = power.sum(dim=1, keepdim=True) + EPSILON
        masks = (power + EPSILON / len(self.stems)) / total
        extra = self.n_fft // 2 + 1 - self.freq_bins
        if self.mask_extension == "average":
            row = masks.mean(dim=-1, keepdim=True)
        else:
            row = masks.new_zeros(*masks.shape[:-1], 1)
        return torch.cat([masks, row.expand(*masks.shape[:-1], extra)], dim=-1)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        batch, _, length = mix.shape
        spec = self.stft(F.pad(mix, (self.n_fft, 0)))  # (B, C, bins, frames)
        frames = spec.shape[-1]
        masks = self.ratio_masks(self.estimates(self.patches(spec.abs())))
        masks = self.unpatch(masks, batch, frames)  # (B, S, C, bins, frames)
        wav = self.istft(masks * spec.unsqueeze(1))
        return wav[..., self.n_fft : self.n_fft + length]

    def training_loss(self, mix: torch.Tensor, stems: torch.Tensor) -> torch.Tensor:
        """Spleeter's ``L1_mask`` loss: per stem the mean absolute difference between the
        masked mix magnitude and the stem's magnitude, summed over stems."""
        batch, count = stems.shape[:2]
        target = self.patches(self.stft(stems.flatten(0, 1)).abs())  # (B * S * P, C, T, F)
        target = target.reshape(batch, count, -1, *target.shape[1:]).transpose(1, 2).flatten(0, 1)
        estimates = self.estimates(self.patches(self.stft(mix).abs()))
        return (estimates - target).abs().mean(dim=(0, 2, 3, 4)).sum()
