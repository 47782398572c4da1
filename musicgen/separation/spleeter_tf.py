"""Spleeter's released TensorFlow checkpoints -> :class:`SpleeterSeparator`.

A released model (``2stems``/``4stems``/``5stems``, the published archives unpacked: a
``checkpoint`` file, ``model.index``, ``model.data-00000-of-00001``, ``model.meta``) stores the
Keras layers of one U-Net per stem, built one after the other in the order of the stem list, so
their automatic names continue across stems: stem ``s`` owns ``conv2d_{7s}`` ... ``conv2d_{7s+6}``
(six encoder convolutions, then the mask convolution), ``batch_normalization_{12s}`` ...
``_{12s+11}`` (six after the encoder convolutions, six in the decoder) and
``conv2d_transpose_{6s}`` ... ``_{6s+5}`` (``name_0`` is written ``name``). Kernels are
``(kh, kw, in, out)`` for convolutions and ``(kh, kw, out, in)`` for transposed ones; both become
PyTorch's layout by the axes ``(3, 2, 0, 1)``. The 6th encoder batch norm feeds nothing in
Spleeter's graph and is not converted. The checkpoint is read by
:mod:`musicgen.separation.tf_checkpoint` (no TensorFlow needed).

The ``-16kHz`` presets use the same weights with 1536 modelled bins (as spleeter's configs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from musicgen.errors import UserError
from musicgen.separation.spleeter import PRESETS, SpleeterSeparator
from musicgen.separation.tf_checkpoint import read_checkpoint

CONVS_PER_STEM, NORMS_PER_STEM, DECONVS_PER_STEM = 7, 12, 6
PRESET_NAMES = (*PRESETS, *(f"{name}-16kHz" for name in PRESETS))


def preset_config(name: str) -> dict:
    """The separator config of a released model (``2stems``, ..., ``5stems-16kHz``)."""
    if name not in PRESET_NAMES:
        raise UserError(f"unknown Spleeter model {name!r}: use one of {', '.join(PRESET_NAMES)}")
    base = name.removesuffix("-16kHz")
    config = {"kind": "spleeter", **PRESETS[base]}
    if name.endswith("-16kHz"):
        config["freq_bins"] = 1536
    return config


def _layer(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}_{index}"


def tf_to_state_dict(variables: dict[str, np.ndarray], stems: int) -> dict[str, torch.Tensor]:
    """The state dict of a :class:`SpleeterSeparator` with ``stems`` U-Nets."""
    state: dict[str, torch.Tensor] = {}

    def conv(target: str, source: str) -> None:
        state[f"{target}.weight"] = torch.from_numpy(
            variables[f"{source}/kernel"].transpose(3, 2, 0, 1).copy()
        )
        state[f"{target}.bias"] = torch.from_numpy(variables[f"{source}/bias"].copy())

    def norm(target: str, source: str) -> None:
        for ours, theirs in (
            ("weight", "gamma"),
            ("bias", "beta"),
            ("running_mean", "moving_mean"),
            ("running_var", "moving_variance"),
        ):
            state[f"{target}.{ours}"] = torch.from_numpy(variables[f"{source}/{theirs}"].copy())
        state[f"{target}.num_batches_tracked"] = torch.tensor(0)

    for stem in range(stems):
        prefix, c0, n0, d0 = (
            f"unets.{stem}",
            CONVS_PER_STEM * stem,
            NORMS_PER_STEM * stem,
            DECONVS_PER_STEM * stem,
        )
        for level in range(6):
            conv(f"{prefix}.encoder.{level}", _layer("conv2d", c0 + level))
            if level < 5:
                norm(f"{prefix}.encoder_norm.{level}", _layer("batch_normalization", n0 + level))
            conv(f"{prefix}.decoder.{level}", _layer("conv2d_transpose", d0 + level))
            norm(f"{prefix}.decoder_norm.{level}", _layer("batch_normalization", n0 + 6 + level))
        conv(f"{prefix}.mask", _layer("conv2d", c0 + 6))
    return state


def convert(variables: dict[str, np.ndarray], config: dict) -> SpleeterSeparator:
    """A separator built from ``config`` (``kind`` optional; ``channels`` read from the
    checkpoint) holding the checkpoint's weights."""
    options = {k: v for k, v in config.items() if k != "kind"}
    stems = len(options["stems"])
    try:
        found = sum(
            1
            for name in variables
            if name.startswith("conv2d") and name.endswith("/kernel") and "transpose" not in name
        )
        if found != CONVS_PER_STEM * stems:
            raise KeyError(
                f"{found} convolutions, {CONVS_PER_STEM * stems} expected for {stems} stems"
            )
        options["channels"] = [
            int(variables[f"{_layer('conv2d', level)}/kernel"].shape[-1]) for level in range(6)
        ]
        options["audio_channels"] = int(variables["conv2d/kernel"].shape[2])
        model = SpleeterSeparator(**options)
        model.load_state_dict(tf_to_state_dict(variables, stems))
    except (KeyError, RuntimeError) as err:
        raise UserError(
            f"the TensorFlow checkpoint does not hold Spleeter's {stems}-stem U-Nets ({err}): "
            "pass the unpacked archive of the model named"
        ) from None
    return model.eval()


def load_spleeter(path: str | Path, name: str | None = None) -> SpleeterSeparator:
    """The released Spleeter model in the folder (or checkpoint prefix) ``path``; ``name`` is
    its preset (default: from the number of stems in the checkpoint: 2, 4 or 5)."""
    variables = read_checkpoint(path)
    if name is None:
        kernels = sum(
            1
            for k in variables
            if k.startswith("conv2d") and k.endswith("/kernel") and "transpose" not in k
        )
        name = {
            2 * CONVS_PER_STEM: "2stems",
            4 * CONVS_PER_STEM: "4stems",
            5 * CONVS_PER_STEM: "5stems",
        }.get(kernels)
        if name is None:
            raise UserError(
                f"{path} is not a released Spleeter model ({kernels} convolutions): pass the 2stems, 4stems or 5stems folder"
            )
    return convert(variables, preset_config(name))
