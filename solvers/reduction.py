"""DDP evaluation for any number of samples per rank (zero included): metric reduction and buffers.

Validation and test stream every sample once over all ranks, so ranks hold different numbers of
samples, possibly none. Solvers therefore accumulate sums, counts or per-item records in their
steps (no collective there) and reduce them with the functions below in
``on_validation_epoch_end`` / ``on_test_epoch_end``, which every rank runs: each function is a
collective when a process group is up, called by every rank in the same order, never inside a
branch that only some ranks take. Without a process group they return the local values.

During ``fit``, validation steps run through the DDP wrapper, whose first forward after a
training step broadcasts rank 0's buffers: a rank without validation batches never gets there,
so :func:`sync_buffers_for_validation` does that broadcast in ``on_validation_epoch_start``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import lightning as L
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_objects(obj: T) -> list[T]:
    """``obj`` of every rank, in rank order (small picklable objects: per-item scores)."""
    if _world_size() == 1:
        return [obj]
    gathered: list = [None] * _world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def sum_tensors(sums: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key-wise sums over ranks of per-rank float64 sums (on the CPU). A key a rank lacks (it saw
    no sample of that kind) counts as zero there; keys come back sorted."""
    total: dict[str, torch.Tensor] = {}
    for part in gather_objects({k: v.detach().double().cpu() for k, v in sums.items()}):
        for key, value in part.items():
            total[key] = total[key] + value if key in total else value
    return dict(sorted(total.items()))


def log_reduced(module: L.LightningModule, metrics: Mapping[str, float], **kwargs) -> None:
    """Log epoch metrics that are already reduced over ranks (the same value on every rank).
    ``rank_zero_only`` turns Lightning's own all-reduce off; ``sync_dist`` only tells it that the
    value is a global one (no warning about unsynced epoch metrics)."""
    for name, value in metrics.items():
        module.log(name, value, sync_dist=True, rank_zero_only=True, **kwargs)


def sync_buffers_for_validation(module: L.LightningModule) -> None:
    """Broadcast rank 0's buffers on every rank now, as DDP would in the first validation forward
    (only on ranks that have a batch), and mark them synced so that DDP skips that broadcast."""
    wrapper = module.trainer.strategy.model
    if not isinstance(wrapper, DistributedDataParallel) or not wrapper.will_sync_module_buffers():
        return
    with torch.no_grad():
        for buffer in wrapper.module.buffers():
            dist.broadcast(buffer, src=0)
    wrapper.require_forward_param_sync = False
