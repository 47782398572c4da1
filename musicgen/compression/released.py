"""MusicGen's released 32 kHz codec -> :class:`CompressionModel`, from either layout.

* AudioCraft: ``compression_state_dict.bin`` = ``{"xp.cfg": <config>, "best_state": <state>}``
  of an ``EncodecModel`` built from ``cfg.seanet``, ``cfg.encodec`` and ``cfg.rvq``. AudioCraft's
  SEANet, convolutions and RVQ keep the ``encodec`` package's parameter names, so the state dict
  loads as it is.
* transformers: the ``audio_encoder`` (``EncodecModel``) of a ``MusicgenForConditionalGeneration``;
  its names differ (``layers`` for ``model``, one ``conv`` level, ``codebook`` for ``_codebook``,
  ``parametrizations.weight.original0/1`` for ``weight_g/v``) and are renamed.

Stereo MusicGen codes each channel with the mono codec and interleaves the codebooks (left k,
right k, ...): :class:`StereoCodec`. Settings our SEANet does not take (other kernel sizes,
activations, ...) are refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from musicgen.compression.config import CodecConfig
from musicgen.compression.model import CompressionModel
from musicgen.errors import UserError

CODEC_FILE = "compression_state_dict.bin"
# SEANet settings the ``encodec`` package fixes; a codec that differs cannot be rebuilt here
FIXED_SEANET = {
    "kernel_size": 7,
    "last_kernel_size": 7,
    "residual_kernel_size": 3,
    "dilation_base": 2,
    "activation": "ELU",
    "final_activation": None,
    "disable_norm_outer_blocks": 0,
}


class StereoCodec(nn.Module):
    """A mono codec applied to each channel; codes interleave the channels per codebook
    (``[L0, R0, L1, R1, ...]``), as AudioCraft's ``InterleaveStereoCompressionModel`` and
    transformers' stereo MusicGen lay them out."""

    def __init__(self, mono: CompressionModel) -> None:
        super().__init__()
        if mono.channels != 1:
            raise ValueError(f"StereoCodec wraps a mono codec, got {mono.channels} channels")
        self.mono = mono
        self.config = mono.config

    sample_rate = property(lambda self: self.mono.sample_rate)
    frame_rate = property(lambda self: self.mono.frame_rate)
    cardinality = property(lambda self: self.mono.cardinality)
    channels = property(lambda self: 2)
    num_codebooks = property(lambda self: 2 * self.mono.num_codebooks)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """Codes ``(B, n_q, frames)`` of ``wav (B, 2, T)``; ``n_q`` (even) counts both channels."""
        per_channel = None if n_q is None else n_q // 2
        codes = [self.mono.encode(wav[:, c : c + 1], per_channel) for c in range(2)]
        return torch.stack(codes, dim=2).flatten(1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Audio ``(B, 2, T)`` of interleaved ``codes (B, 2K, frames)``."""
        return torch.cat([self.mono.decode(codes[:, c::2], length) for c in range(2)], dim=1)


def _check_fixed(values: dict, source: str) -> None:
    for name, expected in FIXED_SEANET.items():
        if name in values and values[name] != expected:
            raise UserError(
                f"{source}: {name} = {values[name]!r} is not supported (our SEANet uses {expected!r})"
            )


def codec_config_from_audiocraft(cfg: dict) -> CodecConfig:
    """:class:`CodecConfig` of the ``EncodecModel`` AudioCraft builds from the resolved ``cfg``."""
    if cfg.get("compression_model") != "encodec":
        raise UserError(f"compression_model {cfg.get('compression_model')!r} is not EnCodec")
    seanet, encodec = dict(cfg["seanet"]), dict(cfg["encodec"])
    for side in ("encoder", "decoder"):
        if seanet.pop(side, None):
            raise UserError(f"seanet.{side} overrides are not supported")
    _check_fixed(seanet, "seanet")
    if seanet.get("activation_params", {"alpha": 1.0}) != {"alpha": 1.0}:
        raise UserError(
            f"seanet.activation_params {seanet['activation_params']} (ELU alpha 1 only)"
        )
    if seanet.get("norm_params") or encodec.get("renormalize") or encodec.get("renorm"):
        raise UserError("seanet.norm_params and encodec.renormalize are not supported")
    if encodec.get("autoencoder", "seanet") != "seanet" or encodec.get("quantizer") != "rvq":
        raise UserError("only a SEANet autoencoder with an RVQ quantizer converts")
    rvq = dict(cfg["rvq"])
    config = CodecConfig(
        sample_rate=int(encodec["sample_rate"]),
        channels=int(encodec["channels"]),
        ratios=tuple(seanet["ratios"]),
        n_filters=int(seanet["n_filters"]),
        dimension=int(seanet["dimension"]),
        n_q=int(rvq["n_q"]),
        bins=int(rvq["bins"]),
        causal=bool(encodec.get("causal", seanet.get("causal", False))),
        norm=str(seanet.get("norm", "weight_norm")),
        pad_mode=str(seanet.get("pad_mode", "reflect")),
        true_skip=bool(seanet.get("true_skip", True)),
        n_residual_layers=int(seanet.get("n_residual_layers", 1)),
        lstm=int(seanet.get("lstm", 2)),
        compress=int(seanet.get("compress", 2)),
        decay=float(rvq.get("decay", 0.99)),
        kmeans_init=bool(rvq.get("kmeans_init", True)),
        kmeans_iters=int(rvq.get("kmeans_iters", 50)),
        threshold_ema_dead_code=float(rvq.get("threshold_ema_dead_code", 2.0)),
        name="audiocraft",
    )
    if int(seanet.get("channels", config.channels)) != config.channels:
        raise UserError("seanet.channels differs from encodec.channels")
    return config


def load_audiocraft_codec(folder: str | Path) -> CompressionModel:
    """The codec of an AudioCraft MusicGen folder (its ``compression_state_dict.bin``)."""
    from musicgen.lm.audiocraft import read_package

    path = Path(folder) / CODEC_FILE
    package = read_package(path, "audio codec")
    if "pretrained" in package:
        raise UserError(
            f"{path} only names the codec {package['pretrained']!r}: download that model's "
            "transformers folder and pass it as the codec (--codec DIR)"
        )
    try:
        config = codec_config_from_audiocraft(package["xp.cfg"])
    except (KeyError, TypeError) as err:
        raise UserError(f"the xp.cfg in {path} lacks a codec setting ({err})") from None
    return CompressionModel._from_state(config, package["best_state"], path)


def codec_config_from_hf(config: Any, n_q: int) -> CodecConfig:
    """:class:`CodecConfig` of a transformers ``EncodecConfig`` with ``n_q`` codebooks."""
    values = {
        "kernel_size": config.kernel_size,
        "last_kernel_size": config.last_kernel_size,
        "residual_kernel_size": config.residual_kernel_size,
        "dilation_base": config.dilation_growth_rate,
    }
    _check_fixed(values, "the transformers EncodecConfig")
    if config.codebook_dim != config.hidden_size:
        raise UserError("a codebook_dim other than hidden_size is not supported")
    if config.use_causal_conv and config.trim_right_ratio != 1.0:
        raise UserError("a causal codec with trim_right_ratio != 1 is not supported")
    return CodecConfig(
        sample_rate=int(config.sampling_rate),
        channels=int(config.audio_channels),
        ratios=tuple(config.upsampling_ratios),
        n_filters=int(config.num_filters),
        dimension=int(config.hidden_size),
        n_q=n_q,
        bins=int(config.codebook_size),
        causal=bool(config.use_causal_conv),
        norm=str(config.norm_type),
        pad_mode=str(config.pad_mode),
        true_skip=not config.use_conv_shortcut,
        n_residual_layers=int(config.num_residual_layers),
        lstm=int(config.num_lstm_layers),
        compress=int(config.compress),
        normalize=bool(config.normalize),
        name="transformers",
    )


def our_codec_key(key: str, ours: set[str]) -> str:
    """Our parameter name of a transformers ``EncodecModel`` state-dict key."""
    key = key.replace(".parametrizations.weight.original0", ".weight_g")
    key = key.replace(".parametrizations.weight.original1", ".weight_v")
    if key.startswith("quantizer.layers."):
        return "quantizer.vq." + key[len("quantizer.") :].replace(".codebook.", "._codebook.")
    key = key.replace("encoder.layers.", "encoder.model.").replace(
        "decoder.layers.", "decoder.model."
    )
    if ".lstm." in key:
        return key
    head, _, param = key.rpartition(".conv.")
    for candidate in (f"{head}.conv.conv.{param}", f"{head}.convtr.convtr.{param}"):
        if candidate in ours:
            return candidate
    return key


def codec_from_hf(audio_encoder: nn.Module) -> CompressionModel:
    """Our codec with the weights of a transformers ``EncodecModel`` (every tensor used)."""
    n_q = len(audio_encoder.quantizer.layers)
    model = CompressionModel(codec_config_from_hf(audio_encoder.config, n_q))
    ours = set(model.state_dict())
    state = {our_codec_key(k, ours): v for k, v in audio_encoder.state_dict().items()}
    return CompressionModel._from_state(model.config, state, Path("the transformers audio_encoder"))
