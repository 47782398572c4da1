"""Separate recordings of any length, rate and channel count with a separator.

:func:`separate` converts the mix to the model's rate and channels, cuts it into windows of the
model's segment (``segment_samples``), ``overlap`` apart, and adds the windows' estimates back
with ``demucs.apply.apply_model``'s triangular transition weights, each window padded to the
model's ``valid_length`` with the neighbouring samples as Demucs' ``TensorChunk.padded`` does:
for the same HTDemucs this equals ``apply_model(model, mix, shifts=0, split=True)``. Short windows
of full length go through the model in small batches (:data:`WINDOW_BATCH_SAMPLES`). The estimates are converted back to the
input's rate and channels (mono input: the mean of the model's channels).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from musicgen.audio import convert_audio, fit_length

# Short windows run through the model together, up to this many input samples per call (more
# helps small models; large ones run faster one window at a time on CPU, as apply_model does).
WINDOW_BATCH_SAMPLES = 2**18


def transition_weight(length: int) -> torch.Tensor:
    """``apply_model``'s window weight: a triangle rising from 1/max to 1 and back."""
    weight = torch.cat(
        [torch.arange(1, length // 2 + 1), torch.arange(length - length // 2, 0, -1)]
    ).float()
    return weight / weight.max()


def _padded(mix: torch.Tensor, offset: int, length: int, target: int) -> torch.Tensor:
    """``TensorChunk(mix, offset, length).padded(target)``: the chunk centred in ``target``
    samples of its surroundings, zeros beyond the mix."""
    total = mix.shape[-1]
    start = offset - (target - length) // 2
    end = start + target
    real_start, real_end = max(0, start), min(total, end)
    return F.pad(mix[..., real_start:real_end], (real_start - start, end - real_end))


def _run(model: nn.Module, chunks: list[torch.Tensor], lengths: list[int]) -> list[torch.Tensor]:
    """The model's estimates of padded chunks, centre-trimmed to ``lengths``."""
    out = model(torch.cat(chunks)) if len(chunks) > 1 else model(chunks[0])
    batch = chunks[0].shape[0]
    results = []
    for index, length in enumerate(lengths):
        estimate = out[index * batch : (index + 1) * batch]
        delta = estimate.shape[-1] - length
        results.append(estimate[..., delta // 2 : delta // 2 + length])
    return results


@torch.no_grad()
def separate_native(
    model: nn.Module,
    mix: torch.Tensor,
    segment: int | None = None,
    overlap: float = 0.25,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Stems ``(B, S, C, T)`` of ``mix`` ``(B, C, T)`` already at the model's rate and
    channels; ``segment`` in samples (default the model's); ``progress(samples)`` is called as
    windows finish."""
    batch, channels, length = mix.shape
    segment = segment or model.segment_samples
    stride = max(int((1 - overlap) * segment), 1)
    weight = transition_weight(segment).to(mix.device)
    out = mix.new_zeros(batch, len(model.stems), channels, length)
    total = mix.new_zeros(length)
    offsets = list(range(0, length, stride))
    per_call = max(1, WINDOW_BATCH_SAMPLES // (batch * channels * model.valid_length(segment)))
    for first in range(0, len(offsets), per_call):
        group = offsets[first : first + per_call]
        lengths = [min(segment, length - offset) for offset in group]
        chunks = [
            _padded(mix, offset, size, model.valid_length(size))
            for offset, size in zip(group, lengths, strict=True)
        ]
        if len({chunk.shape[-1] for chunk in chunks}) > 1:  # a short last window: on its own
            estimates = [_run(model, [c], [n])[0] for c, n in zip(chunks, lengths, strict=True)]
        else:
            estimates = _run(model, chunks, lengths)
        for offset, size, estimate in zip(group, lengths, estimates, strict=True):
            out[..., offset : offset + size] += weight[:size] * estimate
            total[offset : offset + size] += weight[:size]
            if progress is not None:
                progress(min(stride, length - offset))
    return out / total


def separate(
    model: nn.Module,
    mix: torch.Tensor,
    sample_rate: int,
    *,
    segment_seconds: float | None = None,
    overlap: float = 0.25,
    progress: bool | Callable[[int], None] = False,
) -> torch.Tensor:
    """Stems ``(B, S, C, T)`` of ``mix`` ``(C, T)`` or ``(B, C, T)`` at ``sample_rate``, at
    the input's rate, channel count and length (the model is put in eval mode, as
    ``apply_model`` does). ``segment_seconds`` overrides the model's window; ``progress``: a
    tqdm bar (``True``) or a callback given the input samples done."""
    if mix.dim() == 2:
        mix = mix[None]
    if mix.dim() != 3:
        raise ValueError(f"expected a mix (C, T) or (B, C, T), got {tuple(mix.shape)}")
    batch, channels, length = mix.shape
    model_mix = torch.stack(
        [convert_audio(item, sample_rate, model.sample_rate, model.audio_channels) for item in mix]
    )
    segment = round(segment_seconds * model.sample_rate) if segment_seconds else None
    ratio = sample_rate / model.sample_rate
    bar = (
        tqdm(total=length, unit="sample", unit_scale=True, leave=False)
        if progress is True
        else None
    )
    report = bar.update if bar is not None else progress if callable(progress) else None
    callback = (lambda n: report(round(n * ratio))) if report is not None else None
    try:
        stems = separate_native(model.eval(), model_mix, segment, overlap, callback)
    finally:
        if bar is not None:
            bar.close()
    flat = stems.flatten(0, 1)  # (B * S, C_model, T_model)
    out = torch.stack(
        [convert_audio(item, model.sample_rate, sample_rate, channels) for item in flat]
    )
    return fit_length(out, length).reshape(batch, len(model.stems), channels, length)
