"""Source separators (pure PyTorch): Spleeter's U-Nets and HTDemucs behind one interface.

Kinds: ``spleeter``, ``htdemucs`` and ``htdemucs_bag`` (a Demucs bag of HTDemucs models, as
released ``htdemucs_ft``). Every separator has ``stems``, ``sample_rate``, ``audio_channels``, ``config`` (what
:func:`build_separator` rebuilds it from), ``forward(mix (B, C, T)) -> (B, S, C, T)`` and
``training_loss(mix, stems) -> scalar``. Long recordings go through
:func:`musicgen.separation.apply.separate`; saved and released models load with
:func:`musicgen.separation.checkpoint.load_separator`.
"""

from __future__ import annotations

from torch import nn

from musicgen.separation.htdemucs import HTDemucsBag, HTDemucsSeparator
from musicgen.separation.spleeter import SpleeterSeparator

KINDS = {
    "spleeter": SpleeterSeparator,
    "htdemucs": HTDemucsSeparator,
    "htdemucs_bag": HTDemucsBag,
}


def build_separator(config: dict) -> nn.Module:
    """The separator ``config["kind"]`` built from the other keys (its constructor's kwargs)."""
    options = dict(config)
    kind = options.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"unknown separator kind {kind!r}: use one of {sorted(KINDS)}")
    return KINDS[kind](**options)


__all__ = ["HTDemucsBag", "HTDemucsSeparator", "SpleeterSeparator", "build_separator"]
