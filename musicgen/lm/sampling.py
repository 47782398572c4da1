"""Next-token sampling from logits ``(..., card)``: temperature, top-k, top-p (nucleus), greedy.

As AudioCraft's ``LMModel._sample_next_token``: ``temperature == 0`` is greedy, otherwise the
logits are divided by the temperature and ``top_p > 0`` samples from the nucleus, else
``top_k > 0`` from the ``k`` most likely tokens, else from the full distribution.
"""

from __future__ import annotations

import torch


def _flat(logits: torch.Tensor) -> torch.Tensor:
    return logits.reshape(-1, logits.shape[-1]).float()


def sample_top_k(
    logits: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A token ``(...)`` drawn from the softmax over the ``k`` largest logits."""
    flat = _flat(logits)
    values, indices = flat.topk(min(k, flat.shape[-1]), dim=-1)
    choice = torch.multinomial(values.softmax(-1), 1, generator=generator)
    return indices.gather(-1, choice).view(logits.shape[:-1])


def sample_top_p(
    logits: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A token ``(...)`` drawn from the smallest set of most likely tokens whose probability
    reaches ``p`` (the most likely token is always kept)."""
    probs, indices = _flat(logits).softmax(-1).sort(dim=-1, descending=True)
    outside = probs.cumsum(-1) - probs > p
    probs = probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator)
    return indices.gather(-1, choice).view(logits.shape[:-1])


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token ``(...)`` for logits ``(..., card)``; see the module docstring."""
    if temperature < 0 or top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(
            f"need temperature >= 0, top_k >= 0 and 0 <= top_p <= 1; "
            f"got {temperature}, {top_k}, {top_p}"
        )
    if temperature == 0:
        return logits.argmax(-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_p > 0:
        return sample_top_p(logits, top_p, generator)
    if top_k > 0:
        return sample_top_k(logits, top_k, generator)
    flat = _flat(logits)
    return torch.multinomial(flat.softmax(-1), 1, generator=generator).view(logits.shape[:-1])
