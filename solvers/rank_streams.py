"""Distinct random streams for the training step on every rank, and after a resume.

Lightning seeds every process with the same seed (``seed_everything`` here, then again in its
DDP set-up), so draws from the global RNG inside a training step (diffusion noise and steps,
MusicGen's condition dropout, Demucs augmentations, dropout masks) would be the same on every
rank: rank 1's items would get rank 0's noise, which is a smaller batch of random draws than
the world's. A resumed run would also replay the draws of step 0. :class:`RankStreams` reseeds
the global RNGs once training starts from the seed, the rank and the global step. A fresh
one-process run keeps the stream ``seed_everything`` started, so its results do not change.
Draws that must agree across ranks (the codec's quantizer choice and k-means, see
``solvers/compression.py``) use their own generators seeded by the step.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def stream_seed(seed: int, rank: int, step: int) -> int:
    """The seed of ``rank``'s stream from ``step`` on (a 63-bit mix of the three)."""
    mixed = np.random.SeedSequence([seed % 2**32, rank, step]).generate_state(2, np.uint32)
    return int(mixed[0]) << 31 ^ int(mixed[1])


class RankStreams(Callback):
    """Reseed ``torch``, ``numpy`` and ``random`` at the start of training on ranks > 0, on
    every rank of a multi-process run, and after a resume (see the module docstring)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1 and trainer.global_step == 0:
            return
        seed = stream_seed(self.seed, trainer.global_rank, trainer.global_step)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
