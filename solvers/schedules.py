"""Step schedules shared by the solvers: learning-rate warm-up/cosine, the EMA decay ramp, and the
Lightning optimizer/clipping hooks built on them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_lambda(warmup_steps: int, cosine_steps: int | None) -> Callable[[int], float]:
    """LR factor per step: linear warm-up, then constant or a cosine decay to 0 at
    ``cosine_steps`` (for ``torch.optim.lr_scheduler.LambdaLR``)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if cosine_steps is None:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, cosine_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def ema_decay(decay: float, step: int) -> float:
    """The EMA decay at ``step``: short memory while the model moves fast, ``decay`` later."""
    return min(decay, (1 + step) / (10 + step))


def stepped(optimizer: torch.optim.Optimizer, optim: dict) -> dict:
    """Lightning's ``configure_optimizers`` answer: ``optimizer`` with the per-step warm-up/cosine
    factor of ``optim["warmup_steps"]`` and ``optim["cosine_steps"]``."""
    schedule = LambdaLR(optimizer, lr_lambda(optim["warmup_steps"], optim["cosine_steps"]))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class ClipsAtMaxNorm:
    """LightningModule mixin: gradients clipped by norm at the trainer's ``gradient_clip_val``,
    else at ``self.optim["max_norm"]`` (None or 0: no clipping)."""

    optim: dict

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        max_norm = gradient_clip_val or self.optim["max_norm"]
        if max_norm:
            self.clip_gradients(optimizer, max_norm, gradient_clip_algorithm or "norm")
