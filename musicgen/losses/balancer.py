"""EnCodec's gradient balancer (arXiv 2210.13438, Sec. 3.4, eq. 5).

Each loss ``l_i`` that depends only on the model output ``y`` contributes its gradient
``g_i = dl_i/dy`` rescaled to ``R * w_i / sum_j w_j * g_i / <|g_i|>``, where ``<|g_i|>`` is an
exponential moving average of the gradient norm and ``R`` the total norm. With per-item norms
the norm of ``g_i`` is taken over all dimensions but the batch and averaged over the batch.
The weights are then the fractions of the output gradient each loss accounts for, whatever
the scale of the loss.

Under data parallelism (N ranks whose gradients are averaged) the norms are those of one process
on the union of the ranks' batches: a rank's loss is a mean over N times fewer items, so its
gradients are N times the union's. Each rank's balanced gradient is then N times the union's,
and the ranks' average of the parameter gradients is the union batch's. (AudioCraft averages the
ranks' norms instead, which divides the balanced gradient by N relative to losses outside the
balancer, such as the codec's commitment loss.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class Balancer(nn.Module):
    """Turns named losses into one surrogate scalar whose gradient is the balanced gradient.

    The moving averages are buffers (bias-corrected like Adam's moments), so they are saved and
    restored with the training state and averaged over processes under data parallelism.
    """

    def __init__(
        self,
        weights: dict[str, float],
        total_norm: float = 1.0,
        ema_decay: float = 0.999,
        per_item: bool = True,
        epsilon: float = 1e-12,
    ) -> None:
        super().__init__()
        self.weights = {name: float(w) for name, w in weights.items() if w > 0}
        if not self.weights:
            raise ValueError(f"the balancer needs at least one positive weight, got {weights}")
        self.total_norm, self.ema_decay, self.per_item, self.epsilon = (
            total_norm,
            ema_decay,
            per_item,
            epsilon,
        )
        self.register_buffer("norm_sums", torch.zeros(len(self.weights)))
        self.register_buffer("norm_count", torch.zeros(len(self.weights)))

    def _norm(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.flatten(1).norm(dim=1).mean() if self.per_item else grad.norm()

    def _union_norms(self, norms: torch.Tensor) -> torch.Tensor:
        """The gradient norms of the union of all ranks' batches (equal batch sizes) from each
        rank's: the mean of per-item norms, or the norm over the whole batch."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return norms
        world = dist.get_world_size()
        if self.per_item:
            dist.all_reduce(norms)
            return norms / world**2
        squares = norms**2
        dist.all_reduce(squares)
        return squares.sqrt() / world

    def forward(
        self, losses: dict[str, torch.Tensor], output: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(surrogate, norms)``: back-propagating ``surrogate`` puts the balanced gradient on ``output``.

        ``losses`` holds some or all of the weighted names; the weights are normalised over
        those present and only their moving averages move. ``norms`` are this batch's
        gradient norms, for logging.
        """
        unknown = set(losses) - set(self.weights)
        if unknown or not losses:
            raise ValueError(
                f"balancer weights losses {sorted(self.weights)}, got {sorted(losses)}"
            )
        names = [name for name in self.weights if name in losses]
        index = torch.tensor(
            [list(self.weights).index(name) for name in names], device=self.norm_sums.device
        )
        grads = [torch.autograd.grad(losses[name], output, retain_graph=True)[0] for name in names]
        norms = self._union_norms(torch.stack([self._norm(g) for g in grads]).detach())
        with torch.no_grad():
            self.norm_sums[index] = self.norm_sums[index] * self.ema_decay + norms
            self.norm_count[index] = self.norm_count[index] * self.ema_decay + 1.0
            averages = self.norm_sums[index] / self.norm_count[index]
        total_weight = sum(self.weights[name] for name in names)
        balanced = torch.zeros_like(output)
        for name, grad, average in zip(names, grads, averages, strict=True):
            balanced += (
                self.total_norm
                * self.weights[name]
                / total_weight
                * grad
                / (self.epsilon + average)
            )
        return (output * balanced).sum(), dict(zip(names, norms, strict=True))
