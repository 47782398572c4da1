"""Cross-entropy of the K output heads, fused with the heads' projection and computed in chunks
of tokens, so that the ``(tokens, K, card)`` logits never exist at once.

When a gradient is needed, the forward pass also computes it (``softmax - onehot`` per chunk,
then ``grad_hidden = dlogits @ W`` and ``grad_W += dlogits^T @ hidden``): the same three
matrix products as an unfused forward and backward, with each chunk of logits still in cache.
The backward pass only scales these gradients by the incoming one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
CHUNK_LOGITS = 1 << 20  # logits per chunk (4 MiB in float32)


class _HeadsCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        target: torch.Tensor,
        with_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, n_q = target.shape
        card = weight.shape[0] // n_q
        valid = target != IGNORE
        counts = valid.sum(0)
        scale = 1.0 / max(int(counts.sum()), 1)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # softmax precision
        ce_sums = hidden.new_zeros(n_q, dtype=acc)
        grad_hidden = torch.empty_like(hidden) if with_grad else None
        grad_weight = None
        if with_grad:
            grad_weight = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, acc))
        grad_bias = None if bias is None or not with_grad else torch.zeros_like(bias)
        w = weight.to(hidden.dtype)
        autocast = torch.is_autocast_enabled(hidden.device.type)
        step = max(1, CHUNK_LOGITS // weight.shape[0])
        for start in range(0, tokens, step):
            h = hidden[start : start + step]
            logits = F.linear(h, w, None if bias is None else bias.to(h.dtype))
            logits = logits.to(acc).view(-1, n_q, card)
            t = target[start : start + step]
            ok = valid[start : start + step]
            log_probs = logits.log_softmax(-1)
            picked = log_probs.gather(-1, t.clamp(min=0)[..., None])[..., 0]
            ce_sums -= (picked * ok).sum(0)
            if not with_grad:
                continue
            dlogits = log_probs.exp_()
            dlogits.scatter_add_(-1, t.clamp(min=0)[..., None], -ok[..., None].to(dlogits.dtype))
            dlogits.mul_((ok * scale)[..., None])
            d = dlogits.view(h.shape[0], -1).to(h.dtype)
            grad_hidden[start : start + step] = d @ w
            if d.dtype == grad_weight.dtype and not autocast:  # in place: no autocast for it
                grad_weight.addmm_(d.t(), h)
            else:
                grad_weight += (d.t() @ h).to(grad_weight.dtype)
            if grad_bias is not None:
                grad_bias += d.sum(0).to(grad_bias.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        loss = ce_sums.sum() * scale
        ctx.mark_non_differentiable(ce_sums, counts)
        return loss, ce_sums, counts

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, *_):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        if grad_hidden is None:
            raise RuntimeError("heads_cross_entropy was called without gradients enabled")
        return (
            grad_hidden * grad_loss.to(grad_hidden.dtype),
            (grad_weight * grad_loss).to(ctx.weight_dtype),
            None if grad_bias is None else grad_bias * grad_loss,
            None,
            None,
        )


def heads_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of the logits ``F.linear(hidden, weight, bias)`` viewed as ``(N, K, card)``
    against ``target (N, K)`` (``-100`` = ignored): ``(mean over the valid targets,
    per-codebook sums (K,), per-codebook counts (K,))``; only the mean has a gradient."""
    with_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (hidden, weight, bias)
    )
    return _HeadsCrossEntropy.apply(hidden, weight, bias, target, with_grad)
