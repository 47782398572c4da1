"""The 1-D U-Net of MultiBand Diffusion (AudioCraft's ``DiffusionUnet``, same parameter names).

Encoders (strided conv, GroupNorm, ReLU, dilated residual blocks) downsample the waveform by
``stride`` per level while the width grows by ``growth``; the diffusion step's embedding is added
after the first encoder (and after every other one with ``emb_all_layers``). The codec latent,
projected by a 1x1 conv (``conv_codec``) and resized (nearest) to the bottleneck's length, is
added there; the bottleneck is then replaced by zeros (or a BiLSTM's output with ``bilstm``), as
in AudioCraft, so the condition reaches the decoders only through that addition's skip
connection. Decoders mirror the encoders with transposed convs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResBlock(nn.Module):
    """Pre-norm residual block of two dilated convs."""

    def __init__(
        self,
        channels: int,
        kernel: int = 3,
        norm_groups: int = 4,
        dilation: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.norm1 = nn.GroupNorm(norm_groups, channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel, 1, padding, dilation=dilation)
        self.activation1 = nn.ReLU()
        self.dropout1 = nn.Dropout1d(dropout)
        self.norm2 = nn.GroupNorm(norm_groups, channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel, 1, padding, dilation=dilation)
        self.activation2 = nn.ReLU()
        self.dropout2 = nn.Dropout1d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout1(self.conv1(self.activation1(self.norm1(x))))
        h = self.dropout2(self.conv2(self.activation2(self.norm2(h))))
        return x + h


def _res_blocks(channels: int, count: int, norm_groups: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        *[
            ResBlock(channels, norm_groups=norm_groups, dilation=2**i, dropout=dropout)
            for i in range(count)
        ]
    )


class EncoderLayer(nn.Module):
    """Strided conv (input right-padded to a multiple of the stride), norm, ReLU, res blocks."""

    def __init__(
        self,
        chin: int,
        chout: int,
        kernel: int = 4,
        stride: int = 2,
        norm_groups: int = 4,
        res_blocks: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(chin, chout, kernel, stride, (kernel - stride) // 2, bias=False)
        self.norm = nn.GroupNorm(norm_groups, chout)
        self.activation = nn.ReLU()
        self.res_blocks = _res_blocks(chout, res_blocks, norm_groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.conv.stride[0]
        x = F.pad(x, (0, (stride - x.shape[-1] % stride) % stride))
        return self.res_blocks(self.activation(self.norm(self.conv(x))))


class DecoderLayer(nn.Module):
    """Res blocks, norm, ReLU, transposed strided conv."""

    def __init__(
        self,
        chin: int,
        chout: int,
        kernel: int = 4,
        stride: int = 2,
        norm_groups: int = 4,
        res_blocks: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.res_blocks = _res_blocks(chin, res_blocks, norm_groups, dropout)
        self.norm = nn.GroupNorm(norm_groups, chin)
        self.convtr = nn.ConvTranspose1d(
            chin, chout, kernel, stride, (kernel - stride) // 2, bias=False
        )
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convtr(self.activation(self.norm(self.res_blocks(x))))


class BLSTM(nn.Module):
    """Bidirectional LSTM over time with a projection back to the input width."""

    def __init__(self, dim: int, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.lstm(x.permute(2, 0, 1))[0]).permute(1, 2, 0)


class DiffusionUnet(nn.Module):
    """Noise predictor ``(x_t (B, chin, T), step, latent (B, codec_dim, F)) -> (B, chout, T)``.

    Arguments are AudioCraft's ``diffusion_unet`` config (``transformer``/``cross_attention``
    bottlenecks are not implemented and raise), and ``chout`` (default ``chin``; ours: fewer
    output than input channels when the input carries extra condition channels).
    """

    def __init__(
        self,
        chin: int = 1,
        chout: int | None = None,
        hidden: int = 24,
        depth: int = 3,
        growth: float = 2.0,
        max_channels: int = 10_000,
        num_steps: int = 1000,
        emb_all_layers: bool = False,
        bilstm: bool = False,
        codec_dim: int | None = None,
        kernel: int = 4,
        stride: int = 2,
        norm_groups: int = 4,
        res_blocks: int = 1,
        dropout: float = 0.0,
        transformer: bool = False,
        cross_attention: bool = False,
    ) -> None:
        super().__init__()
        if transformer or cross_attention:
            raise ValueError("the transformer/cross-attention U-Net bottleneck is not implemented")
        layer = dict(
            kernel=kernel,
            stride=stride,
            norm_groups=norm_groups,
            res_blocks=res_blocks,
            dropout=dropout,
        )
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.embedding = nn.Embedding(num_steps, hidden)
        self.embeddings = nn.ModuleList() if emb_all_layers else None
        for d in range(depth):
            self.encoders.append(EncoderLayer(chin, hidden, **layer))
            out = (chout or chin) if d == 0 else chin
            self.decoders.insert(0, DecoderLayer(hidden, out, **layer))
            if self.embeddings is not None and d > 0:
                self.embeddings.append(nn.Embedding(num_steps, hidden))
            chin, hidden = hidden, min(int(hidden * growth), max_channels)
        self.bilstm = BLSTM(chin) if bilstm else None
        self.conv_codec = nn.Conv1d(codec_dim, chin, 1) if codec_dim is not None else None

    def forward(
        self, x: torch.Tensor, step: int | torch.Tensor, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = x.shape[0]
        if not isinstance(step, torch.Tensor):
            step = torch.tensor([step], device=x.device, dtype=torch.long).expand(batch)
        skips = []
        z = x
        for idx, encoder in enumerate(self.encoders):
            z = encoder(z)
            if idx == 0:
                z = z + self.embedding(step).view(batch, -1, 1).expand_as(z)
            elif self.embeddings is not None:
                z = z + self.embeddings[idx - 1](step).view(batch, -1, 1).expand_as(z)
            skips.append(z)
        if self.conv_codec is not None:
            if condition is None:
                raise ValueError("this U-Net is conditioned on a codec latent: pass condition")
            emb = self.conv_codec(condition)
            if emb.shape[-1] > 2 * z.shape[-1]:
                raise ValueError(
                    f"the condition ({emb.shape[-1]} frames) is longer than twice the U-Net "
                    f"bottleneck ({z.shape[-1]}): use fewer or smaller strides"
                )
            z = z + F.interpolate(emb, z.shape[-1])
            skips[-1] = z  # AudioCraft adds in place: the last skip carries the condition
        z = torch.zeros_like(z) if self.bilstm is None else self.bilstm(z)
        for decoder in self.decoders:
            s = skips.pop(-1)
            z = decoder(z[:, :, : s.shape[2]] + s)
        return z[:, :, : x.shape[2]]
