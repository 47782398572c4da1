"""Audio clips and spectrogram images to the loggers that take media (W&B, TensorBoard).

Other loggers (CSV, none) have nowhere to put them: the calls return False and do nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

from musicgen.losses.spectral import MultiScaleMel, log_mel


def supports_media(logger: Logger | None) -> bool:
    return isinstance(logger, (WandbLogger, TensorBoardLogger))


def spectrogram_image(wav: torch.Tensor, sample_rate: int, window_log2: int = 10) -> np.ndarray:
    """A uint8 ``(mels, frames)`` image of the log-mel spectrogram of ``wav`` ``(C, T)``, low bins at the bottom."""
    mel = MultiScaleMel(sample_rate, scales=[window_log2], n_mels=80).to(wav.device)
    image = log_mel(mel(wav[None])[0][0].mean(dim=0)).flip(0)
    image = (image - image.min()) / (image.max() - image.min() + 1e-8)
    return (image * 255).to(torch.uint8).cpu().numpy()


def log_audio(
    logger: Logger | None,
    key: str,
    clips: list[torch.Tensor],
    sample_rate: int,
    step: int,
    captions: list[str],
) -> bool:
    """Log ``(C, T)`` clips (mono mixes) under ``key``; False when the logger takes no audio."""
    mono = [clip.float().mean(dim=0).clamp(-1, 1).cpu().numpy() for clip in clips]
    if isinstance(logger, WandbLogger):
        logger.log_audio(
            key, mono, step=step, sample_rate=[sample_rate] * len(mono), caption=captions
        )
    elif isinstance(logger, TensorBoardLogger):
        for audio, caption in zip(mono, captions, strict=True):
            logger.experiment.add_audio(f"{key}/{caption}", audio[None], step, sample_rate)
    else:
        return False
    return True


def log_images(
    logger: Logger | None, key: str, images: list[np.ndarray], step: int, captions: list[str]
) -> bool:
    """Log 2-D uint8 images under ``key``; False when the logger takes no images."""
    if isinstance(logger, WandbLogger):
        logger.log_image(key, images, step=step, caption=captions)
    elif isinstance(logger, TensorBoardLogger):
        for image, caption in zip(images, captions, strict=True):
            logger.experiment.add_image(f"{key}/{caption}", image, step, dataformats="HW")
    else:
        return False
    return True
