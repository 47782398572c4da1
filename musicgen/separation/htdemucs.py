"""HTDemucs from the ``demucs`` package behind the separator interface (the network is
``demucs.htdemucs.HTDemucs`` itself), trained with the Demucs recipe's L1 loss on waveforms."""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from demucs.htdemucs import HTDemucs
from torch import nn


class HTDemucsSeparator(nn.Module):
    """``HTDemucs(sources=stems, samplerate, audio_channels, **kwargs)`` as ``self.model``;
    ``forward`` maps ``(B, C, T)`` to ``(B, S, C, T)``."""

    def __init__(
        self,
        sources: list[str] | tuple[str, ...] = ("drums", "bass", "other", "vocals"),
        samplerate: int = 44100,
        audio_channels: int = 2,
        **kwargs,
    ) -> None:
        super().__init__()
        self.model = HTDemucs(
            sources=list(sources), samplerate=samplerate, audio_channels=audio_channels, **kwargs
        )
        self.stems = tuple(sources)
        self.sample_rate, self.audio_channels = int(samplerate), int(audio_channels)
        segment = kwargs.get("segment", self.model.segment)
        kwargs["segment"] = float(segment) if isinstance(segment, Fraction) else segment
        self.config = {
            "kind": "htdemucs",
            "sources": list(sources),
            "samplerate": self.sample_rate,
            "audio_channels": self.audio_channels,
            **kwargs,
        }

    @classmethod
    def wrap(cls, model: HTDemucs) -> HTDemucsSeparator:
        """The separator around an existing (e.g. pretrained) ``HTDemucs``."""
        _, kwargs = model._init_args_kwargs
        kwargs = {
            k: v for k, v in kwargs.items() if k not in ("sources", "samplerate", "audio_channels")
        }
        separator = cls(model.sources, model.samplerate, model.audio_channels, **kwargs)
        separator.model = model
        return separator

    @property
    def segment_samples(self) -> int:
        """``demucs.apply.apply_model``'s window: the training segment."""
        return int(self.model.segment * self.model.samplerate)

    def valid_length(self, length: int) -> int:
        return self.model.valid_length(length)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return self.model(mix)

    def training_loss(self, mix: torch.Tensor, stems: torch.Tensor) -> torch.Tensor:
        """Demucs' ``l1`` loss: mean absolute waveform error (equal source weights)."""
        return F.l1_loss(self.model(mix), stems)


class HTDemucsBag(nn.Module):
    """A Demucs bag of HTDemucs models (``htdemucs_ft``): per stem, the ``weights``-weighted
    mean of the models' estimates, as ``demucs.apply.apply_model`` combines a ``BagOfModels``
    (the models must share sources, rate, channels and segment)."""

    def __init__(self, models: list[dict], weights: list[list[float]] | None = None) -> None:
        super().__init__()
        self.models = nn.ModuleList(
            HTDemucsSeparator(**{k: v for k, v in m.items() if k != "kind"}) for m in models
        )
        first = self.models[0]
        if any(
            (m.stems, m.sample_rate, m.audio_channels, m.segment_samples)
            != (first.stems, first.sample_rate, first.audio_channels, first.segment_samples)
            for m in self.models
        ):
            raise ValueError("the models of a bag must share sources, rate, channels and segment")
        self.stems, self.sample_rate = first.stems, first.sample_rate
        self.audio_channels, self.segment_samples = first.audio_channels, first.segment_samples
        weights = weights or [[1.0] * len(self.stems) for _ in self.models]
        self.register_buffer(
            "weights", torch.tensor(weights, dtype=torch.float32), persistent=False
        )
        self.config = {
            "kind": "htdemucs_bag",
            "models": [dict(m.config) for m in self.models],
            "weights": [list(map(float, w)) for w in weights],
        }

    @classmethod
    def wrap(cls, bag) -> HTDemucsBag:
        """The separator around a loaded ``demucs.apply.BagOfModels`` of HTDemucs."""
        wrapped = [HTDemucsSeparator.wrap(model) for model in bag.models]
        separator = cls([m.config for m in wrapped], bag.weights)
        separator.models = nn.ModuleList(wrapped)
        return separator

    def valid_length(self, length: int) -> int:
        return self.models[0].valid_length(length)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        total = sum(
            w[:, None, None] * m(mix) for w, m in zip(self.weights, self.models, strict=True)
        )
        return total / self.weights.sum(dim=0)[:, None, None]

    def training_loss(self, mix: torch.Tensor, stems: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(self(mix), stems)
