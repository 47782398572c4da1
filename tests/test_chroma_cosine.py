"""Chroma cosine similarity: identical = 1, disjoint = 0, and AudioCraft's frame weighting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from musicgen.metrics.chroma_cosine import (
    ChromaCosineSimilarity,
    chroma_cosine_similarity,
    frames_for_samples,
)


def one_hot(bins: list[int]) -> torch.Tensor:
    return F.one_hot(torch.tensor(bins), 12).float()


def test_identical_chroma_scores_one() -> None:
    chroma = torch.rand(3, 20, 12)
    assert chroma_cosine_similarity(chroma, chroma) == pytest.approx(1.0, abs=1e-12)
    argmax = one_hot([0, 4, 7, 11] * 5)[None]
    assert chroma_cosine_similarity(argmax, argmax) == pytest.approx(1.0)


def test_disjoint_one_hots_score_zero() -> None:
    ref = one_hot([0, 2, 4, 5])[None]
    out = one_hot([1, 3, 6, 7])[None]
    assert chroma_cosine_similarity(ref, out) == 0.0


def test_scale_does_not_matter_and_silent_frames_count_as_zero() -> None:
    ref = torch.rand(1, 4, 12)
    assert chroma_cosine_similarity(ref, 5.0 * ref) == pytest.approx(1.0, abs=1e-12)
    out = ref.clone()
    out[0, 1] = 0.0  # a silent generated frame
    assert chroma_cosine_similarity(ref, out) == pytest.approx(3 / 4, abs=1e-12)


def test_items_are_weighted_by_their_frame_counts() -> None:
    # item 0: 6 valid frames, all matching; item 1: 2 valid frames, none matching
    ref = torch.stack([one_hot([0] * 8), one_hot([3] * 8)])
    out = torch.stack([one_hot([0] * 8), one_hot([9] * 8)])
    value = chroma_cosine_similarity(ref, out, lengths=[6, 2])
    assert value == pytest.approx(6 / 8)  # not the per-item mean 0.5
    # the padded frames past each length are ignored even when they disagree
    out[0, 6:] = one_hot([5, 5])
    assert chroma_cosine_similarity(ref, out, lengths=[6, 2]) == pytest.approx(6 / 8)


def test_accumulation_over_batches_equals_one_pass() -> None:
    gen = torch.Generator().manual_seed(0)
    ref, out = torch.rand(5, 30, 12, generator=gen), torch.rand(5, 30, 12, generator=gen)
    lengths = [30, 12, 7, 25, 1]
    metric = ChromaCosineSimilarity()
    metric.update(ref[:2], out[:2], lengths[:2])
    metric.update(ref[2:], out[2:], torch.tensor(lengths[2:]))
    r, o = ref.double().numpy(), out.double().numpy()
    cosines = [
        np.dot(r[i, t], o[i, t]) / (np.linalg.norm(r[i, t]) * np.linalg.norm(o[i, t]))
        for i, n in enumerate(lengths)
        for t in range(n)
    ]
    expected = float(np.sum(cosines) / sum(lengths))
    assert metric.frames == sum(lengths)
    assert metric.compute() == pytest.approx(expected, rel=1e-12)
    assert chroma_cosine_similarity(ref, out, lengths) == pytest.approx(expected, rel=1e-12)


def test_different_frame_counts_compare_the_common_frames() -> None:
    ref = one_hot([1, 2, 3, 4])[None]
    out = one_hot([1, 2, 3])[None]
    assert chroma_cosine_similarity(ref, out) == pytest.approx(1.0)


def test_frames_for_samples_rounds_up() -> None:
    assert frames_for_samples(4096 * 3, 4096) == 3
    assert frames_for_samples(4096 * 3 + 1, 4096) == 4
    assert frames_for_samples(0, 4096) == 0


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"shape \(B, F, n_chroma\)"):
        chroma_cosine_similarity(torch.rand(4, 12), torch.rand(4, 12))
    with pytest.raises(ValueError, match="lengths"):
        chroma_cosine_similarity(torch.rand(2, 4, 12), torch.rand(2, 4, 12), lengths=[4, 5])
    with pytest.raises(ValueError, match="chroma bins differ"):
        chroma_cosine_similarity(torch.rand(1, 4, 12), torch.rand(1, 4, 24))
    with pytest.raises(ValueError, match="zero frames"):
        ChromaCosineSimilarity().compute()
