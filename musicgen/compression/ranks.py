"""Collectives for the codec's training statistics (codebook counts and sums, k-means rows,
relative feature-matching scales); the identity without a process group.

Each is called by every rank in the same order (the codec's training step is), and
works for any number of rows per rank, zero included.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The element-wise sums over ranks of ``tensors`` (one all-reduce for all of them)."""
    if world_size() == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    return tuple(
        part.view_as(t)
        for part, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)
    )


def mean_over_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The element-wise means over ranks of ``tensors`` (one all-reduce): with equal batch
    sizes, a batch mean's value on the union of the ranks' batches."""
    if world_size() == 1:
        return tensors
    return [t / world_size() for t in sum_over_ranks(*tensors)]


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """The rows ``(N_r, D)`` of every rank concatenated in rank order ``(sum N_r, D)``."""
    if world_size() == 1:
        return rows
    counts = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.empty_like(counts) for _ in range(world_size())]
    dist.all_gather(sizes, counts)
    longest = int(max(size.item() for size in sizes))
    padded = rows.new_zeros(longest, rows.shape[1])
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(size.item())] for part, size in zip(parts, sizes, strict=True)])
