"""The Demucs training augmentations (``demucs/augment.py``) as pure functions of stems
``(B, S, C, T)`` and a ``torch.Generator``.

Each draws exactly what the ``demucs`` module draws, in the same order, from ``generator``
instead of torch's global generator, so a generator seeded like the global one gives the same
result. Demucs' ``proba`` test uses Python's ``random``; here a probability below 1 is drawn from
``generator`` and a probability of 1 draws nothing (as then in Demucs the torch draws alone decide).
"""

from __future__ import annotations

import torch


def _applies(proba: float, generator: torch.Generator) -> bool:
    return proba >= 1 or bool(torch.rand((), generator=generator) < proba)


def shift(
    stems: torch.Tensor, shift: int, generator: torch.Generator, same: bool = False
) -> torch.Tensor:
    """``Shift``: each stem (all stems with ``same``) cut at a random offset below ``shift``;
    the result is ``shift`` samples shorter."""
    if shift <= 0:
        return stems
    batch, sources, channels, time = stems.shape
    length = time - shift
    offsets = torch.randint(shift, [batch, 1 if same else sources, 1, 1], generator=generator)
    offsets = offsets.to(stems.device).expand(-1, sources, channels, -1)
    indexes = torch.arange(length, device=stems.device)
    return stems.gather(3, indexes + offsets)


def flip_channels(stems: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``FlipChannels``: left and right swapped per stem with probability 1/2 (stereo only)."""
    batch, sources, channels, time = stems.shape
    if channels != 2:
        return stems
    left = torch.randint(2, (batch, sources, 1, 1), generator=generator).to(stems.device)
    left = left.expand(-1, -1, -1, time)
    return torch.cat([stems.gather(2, left), stems.gather(2, 1 - left)], dim=2)


def flip_sign(stems: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``FlipSign``: each stem negated with probability 1/2."""
    batch, sources = stems.shape[:2]
    signs = torch.randint(2, (batch, sources, 1, 1), generator=generator, dtype=torch.float32)
    return stems * (2 * signs.to(stems) - 1)


def scale(
    stems: torch.Tensor,
    generator: torch.Generator,
    low: float = 0.25,
    high: float = 1.25,
    proba: float = 1.0,
) -> torch.Tensor:
    """``Scale``: each stem times a gain drawn uniformly in ``[low, high)``."""
    if not _applies(proba, generator):
        return stems
    batch, sources = stems.shape[:2]
    gains = torch.empty(batch, sources, 1, 1).uniform_(low, high, generator=generator)
    return stems * gains.to(stems)


def remix(
    stems: torch.Tensor, generator: torch.Generator, group_size: int | None = 4, proba: float = 1.0
) -> torch.Tensor:
    """``Remix``: within groups of ``group_size`` items (``None``: the batch), each stem is
    given to a random item of its group, so mixes combine stems of different tracks."""
    if not _applies(proba, generator):
        return stems
    batch, sources, channels, time = stems.shape
    group_size = group_size or batch
    if batch % group_size:
        raise ValueError(
            f"batch size {batch} must be divisible by the remix group size {group_size}"
        )
    groups = batch // group_size
    grouped = stems.view(groups, group_size, sources, channels, time)
    order = torch.argsort(torch.rand(groups, group_size, sources, 1, 1, generator=generator), dim=1)
    order = order.to(stems.device).expand(-1, -1, -1, channels, time)
    return grouped.gather(1, order).view(batch, sources, channels, time)


def augment(
    stems: torch.Tensor,
    generator: torch.Generator,
    shift_samples: int = 44100,
    shift_same: bool = False,
    flip: bool = True,
    scale_range: tuple[float, float] | None = (0.25, 1.25),
    remix_group_size: int | None = 4,
) -> torch.Tensor:
    """The Demucs training chain in its order: shift, channel and sign flips, scale, remix
    (Demucs' defaults: 1 s shift, flips, gains 0.25-1.25, remix in groups of 4). The mix of the
    result is ``result.sum(dim=1)``; the result is ``shift_samples`` shorter than ``stems``."""
    stems = shift(stems, shift_samples, generator, shift_same)
    if flip:
        stems = flip_sign(flip_channels(stems, generator), generator)
    if scale_range is not None:
        stems = scale(stems, generator, *scale_range)
    if remix_group_size != 0:
        stems = remix(stems, generator, remix_group_size)
    return stems
