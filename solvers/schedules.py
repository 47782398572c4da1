"""Step schedules shared by the solvers: learning-rate warm-up/cosine and the EMA decay ramp."""

from __future__ import annotations

import math
from collections.abc import Callable


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
