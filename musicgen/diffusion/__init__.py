"""MultiBand Diffusion (arXiv 2308.02560): a diffusion decoder from codec tokens to audio.

:class:`MultiBandDiffusion` is the model; :func:`load_diffusion` reads a ``train.py``
checkpoint of ``solver=diffusion`` or AudioCraft's released MBD weights.
"""

from musicgen.diffusion.checkpoint import load_diffusion
from musicgen.diffusion.model import MultiBandDiffusion

__all__ = ["MultiBandDiffusion", "load_diffusion"]
