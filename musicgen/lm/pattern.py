"""MusicGen's delay interleaving of K parallel codebook streams.

Codebook ``k`` is shifted right by ``delays[k]`` steps (default ``k``) and one all-special
"start" step is put in front, so a sequence of ``T`` frames becomes ``T + max_delay + 1``
steps. Step ``s`` of codebook ``k`` holds frame ``s - 1 - delays[k]`` when that frame exists,
and the special token (``card``) otherwise::

    step        0  1  2  3  4  5
    codebook 0  S  a0 a1 a2 S  S        (T = 3, delays [0, 1, 2])
    codebook 1  S  S  b0 b1 b2 S
    codebook 2  S  S  S  c0 c1 c2
"""

from __future__ import annotations

import torch


class DelayPattern:
    """Build and revert the delay layout of ``n_q`` codebooks (delays default to ``0..n_q-1``)."""

    def __init__(self, n_q: int, delays: list[int] | None = None) -> None:
        delays = list(range(n_q)) if delays is None else [int(d) for d in delays]
        if n_q < 1:
            raise ValueError(f"n_q must be >= 1, got {n_q}")
        if len(delays) != n_q:
            raise ValueError(f"delays {delays} must have one entry per codebook (n_q={n_q})")
        if min(delays) < 0:
            raise ValueError(f"delays must be >= 0, got {delays}")
        self.n_q = n_q
        self.delays = delays
        self.max_delay = max(delays)

    def num_steps(self, num_frames: int) -> int:
        """Steps of the layout of ``num_frames`` frames."""
        return num_frames + self.max_delay + 1

    def num_frames(self, num_steps: int) -> int:
        """Frames fully contained in ``num_steps`` steps."""
        return max(num_steps - self.max_delay - 1, 0)

    def _frame_index(self, steps: int, device: torch.device) -> torch.Tensor:
        """``(K, steps)`` frame shown at each step of each codebook (negative before the start)."""
        delays = torch.tensor(self.delays, device=device)
        return torch.arange(steps, device=device)[None, :] - 1 - delays[:, None]

    def step_mask(self, num_frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(K, num_steps)`` bool: True where a step holds a frame (False = special padding)."""
        frame = self._frame_index(self.num_steps(num_frames), torch.device(device))
        return (frame >= 0) & (frame < num_frames)

    def build(self, codes: torch.Tensor, special: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``codes (B, K, T)`` -> ``(seq (B, K, T + max_delay + 1), mask (K, T + max_delay + 1))``."""
        self._check(codes)
        batch, _, frames = codes.shape
        frame = self._frame_index(self.num_steps(frames), codes.device)
        mask = (frame >= 0) & (frame < frames)
        if frames == 0:
            return codes.new_full((batch, self.n_q, frame.shape[1]), special), mask
        index = frame.clamp(0, frames - 1).expand(batch, -1, -1)
        seq = codes.gather(2, index).masked_fill(~mask, special)
        return seq, mask

    def revert(
        self, seq: torch.Tensor, special: int, num_frames: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``seq (B, K, S)`` -> ``(codes (B, K, T), mask (K, T))``, the inverse of :meth:`build`.

        ``T`` defaults to the frames fully contained in ``S`` steps (``S - max_delay - 1``), where
        ``mask`` is all True; a larger ``num_frames`` also returns the frames only some codebooks
        reached, ``mask`` marking the positions present in ``seq`` (the rest are ``special``).
        """
        self._check(seq)
        steps = seq.shape[2]
        frames = self.num_frames(steps) if num_frames is None else num_frames
        delays = torch.tensor(self.delays, device=seq.device)
        step = torch.arange(frames, device=seq.device)[None, :] + 1 + delays[:, None]
        mask = step < steps
        if steps == 0:
            return seq.new_full((seq.shape[0], self.n_q, frames), special), mask
        index = step.clamp(max=steps - 1).expand(seq.shape[0], -1, -1)
        return seq.gather(2, index).masked_fill(~mask, special), mask

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.n_q:
            raise ValueError(f"expected a (B, {self.n_q}, T) tensor, got {tuple(x.shape)}")
