"""MusicGen's language model over delayed codebook streams (pure PyTorch).

Typical use::

    lm = MusicLM(LMConfig(dim=256, num_heads=4, num_layers=4, ffn_dim=1024))
    out = lm.compute_loss(codes, prefix, prefix_mask)        # codes (B, K, T)
    out.loss.backward()
    codes = lm.generate(prefix, prefix_mask, null_prefix, null_mask, num_frames=250)
    fast = lm.for_generation("int8")  # or "bfloat16": faster CPU decoding, close tokens
"""

from musicgen.lm.config import LMConfig
from musicgen.lm.model import LMLoss, MusicLM
from musicgen.lm.pattern import DelayPattern
from musicgen.lm.sampling import sample_next, sample_top_k, sample_top_p
from musicgen.lm.transformer import KVCache

__all__ = [
    "DelayPattern",
    "KVCache",
    "LMConfig",
    "LMLoss",
    "MusicLM",
    "sample_next",
    "sample_top_k",
    "sample_top_p",
]
