"""Sizes of the MusicGen language model; the defaults are MusicGen-small's decoder (dim 1024,
24 layers of 16 heads, feed-forward 4096, 4 codebooks of 2048, no biases) with the conditions
prepended (as MusicGen-Melody reads them); ``cross_attention`` reads them through a
cross-attention block in every layer instead (as the text-only MusicGen models do)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields


@dataclass
class LMConfig:
    """Decoder over ``n_q`` codebooks of ``card`` entries (token ``card`` is the special one)."""

    n_q: int = 4
    card: int = 2048
    dim: int = 1024
    num_heads: int = 16
    num_layers: int = 24
    ffn_dim: int = 4096
    dropout: float = 0.0
    max_period: float = 10000.0
    norm_first: bool = True
    bias: bool = False
    delays: list[int] | None = None
    cross_attention: bool = False

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.dim % 2:
            raise ValueError(f"dim {self.dim} must be even (sinusoidal positions)")
        if self.delays is not None:
            self.delays = [int(d) for d in self.delays]
            if len(self.delays) != self.n_q:
                raise ValueError(f"delays {self.delays} need one entry per codebook ({self.n_q})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> LMConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown LMConfig fields {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**dict(values))
