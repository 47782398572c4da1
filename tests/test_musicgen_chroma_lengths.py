"""MusicGen's chroma cosine counts each item's valid frames only (AudioCraft's
``ChromaCosineSimilarityMetric``): on a zero-padded batch the solver's metric equals the metric
over the unpadded items."""

from __future__ import annotations

import pytest
import torch

from tests.test_musicgen_solver import (
    make_solver,
    tone_batch,
    write_tiny_codec,
    write_tiny_text_encoder,
)

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


@pytest.fixture(scope="module")
def solver(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("chroma_lengths")
    assets = {
        "codec": write_tiny_codec(root / "codec"),
        "text": write_tiny_text_encoder(root / "text"),
    }
    return make_solver(assets)


def frame_weighted(metrics: list[dict]) -> dict[str, float]:
    """The metric over several batches: summed cosines over summed frames, per output."""
    return {
        name: sum(m[name].cosine_sum for m in metrics) / sum(m[name].frames for m in metrics)
        for name in metrics[0]
    }


def test_padding_frames_do_not_count(solver) -> None:
    lengths = [16000, 8000]  # the second item is zero-padded to the first's length
    batch = tone_batch(1.0)
    for field in ("audio", "stems"):
        batch[field][1, ..., lengths[1] :] = 0
    batch["lengths"] = torch.tensor(lengths)
    # Generated clips run to the batch length (as in the test loop); past an item's end they
    # are not silent, so counting the padding frames would lower the score.
    full = tone_batch(1.0)
    noise = 0.05 * torch.randn(full["audio"].shape, generator=torch.Generator().manual_seed(0))
    outputs = {"melody": full["stems"][:, 2], "mix": full["audio"] + noise}

    padded = frame_weighted([solver.chroma_metrics(batch, outputs)])
    items = []
    for i, n in enumerate(lengths):
        item = {
            "audio": batch["audio"][i : i + 1, ..., :n],
            "stems": batch["stems"][i : i + 1, ..., :n],
        }
        items.append(
            solver.chroma_metrics(item, {k: v[i : i + 1, ..., :n] for k, v in outputs.items()})
        )
    assert padded == pytest.approx(frame_weighted(items), abs=1e-12)
    assert solver.chroma_scores(batch, outputs) == padded
    without_lengths = {k: v for k, v in batch.items() if k != "lengths"}
    assert solver.chroma_scores(without_lengths, outputs)["melody"] < padded["melody"] - 0.2
