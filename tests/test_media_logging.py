"""What each solver's validation logs as media reaches real loggers: a TensorBoard event file
(``logger=tensorboard``) and an offline W&B run (``logger=wandb`` without an API key): audio
clips, spectrogram / chroma / piano-roll images, and MT3's transcribed MIDI files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from PIL import Image
from torch.utils.data import DataLoader

from tests.test_compression_solver import fixed_batch, small_solver
from tests.test_mt3_solver import NOTES
from tests.test_mt3_solver import solver as mt3_solver
from tests.test_musicgen_solver import assets, make_solver, tone_batch  # noqa: F401 (fixture)

pytestmark = pytest.mark.filterwarnings("ignore")
LOGGERS = ["tensorboard", "wandb"]


@pytest.fixture(autouse=True)
def no_shared_wandb_service():
    """An in-process W&B run starts a service and names it in ``WANDB_SERVICE``, which every
    later subprocess (a SLURM job of another test) would inherit and share: stop it after."""
    yield
    import wandb

    wandb.teardown()
    os.environ.pop("WANDB_SERVICE", None)


def make_logger(kind: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> Logger:
    if kind == "tensorboard":
        return TensorBoardLogger(save_dir=out, name="logs", default_hp_metric=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    return WandbLogger(project="media-test", save_dir=str(out), offline=True)


def validate(solver: L.LightningModule, batch: dict, logger: Logger, out: Path) -> None:
    trainer = L.Trainer(
        logger=logger,
        default_root_dir=out,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.validate(solver, DataLoader([batch], batch_size=None), verbose=False)
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()


def tensorboard_media(out: Path) -> dict[str, dict[str, list]]:
    """Tags -> decoded media of the event files under ``out``: audio (samples, rate), images."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = out.rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent), size_guidance={"audio": 0, "images": 0})
    acc.Reload()
    audio = {tag: [sf.read(io.BytesIO(e.encoded_audio_string)) for e in acc.Audio(tag)]
             for tag in acc.Tags()["audio"]}  # fmt: skip
    images = {tag: [np.asarray(Image.open(io.BytesIO(e.encoded_image_string)))
                    for e in acc.Images(tag)] for tag in acc.Tags()["images"]}  # fmt: skip
    return {"audio": audio, "images": images}


def wandb_files(out: Path, pattern: str) -> list[Path]:
    (run,) = (out / "wandb").glob("offline-run-*")
    return sorted((run / "files").rglob(pattern))


@pytest.mark.parametrize("kind", LOGGERS)
def test_compression_logs_audio_and_spectrograms(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch, solver = fixed_batch(), small_solver()
    validate(solver, batch, make_logger(kind, tmp_path, monkeypatch), tmp_path)
    if kind == "tensorboard":
        media = tensorboard_media(tmp_path)
        assert {t.rsplit("/", 1)[0] for t in media["audio"]} == {"valid/audio"}
        assert len(media["audio"]) == 4  # original and decoded of 2 items
        for (samples, rate), *_ in media["audio"].values():
            assert rate == 16000 and samples.shape == (batch["audio"].shape[-1],)
        assert len(media["images"]) == 4
        assert all(images[0].ndim >= 2 for images in media["images"].values())
    else:  # W&B names media files by content: identical clips share one file
        with torch.no_grad():
            decoded = solver.generator.decode(solver.generator.encode(batch["audio"]), 8000)
        clips = {c.numpy().tobytes() for c in torch.cat([batch["audio"], decoded]).mean(1)}
        assert len(wandb_files(tmp_path, "*.wav")) == len(clips) >= 3
        assert len(wandb_files(tmp_path, "*.png")) == len(clips)


@pytest.mark.parametrize("kind", LOGGERS)
def test_musicgen_logs_samples_and_chroma_images(
    kind: str,
    assets: dict,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    solver = make_solver(assets)
    validate(solver, tone_batch(), make_logger(kind, tmp_path, monkeypatch), tmp_path)
    count = 2 * solver.samples["count"]  # with and without the melody
    if kind == "tensorboard":
        media = tensorboard_media(tmp_path)
        assert len(media["audio"]) == count and len(media["images"]) == count
        assert all(t.startswith("valid/samples/") for t in media["audio"])
        assert all(t.startswith("valid/chroma/") for t in media["images"])
    else:  # W&B names media files by content: identical clips (untrained model) share one
        assert 1 <= len(wandb_files(tmp_path, "samples_*.wav")) <= count
        assert 1 <= len(wandb_files(tmp_path, "chroma_*.png")) <= count


@pytest.mark.parametrize("kind", LOGGERS)
def test_mt3_logs_piano_rolls_and_writes_midi(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = {
        "audio": torch.randn(1, 1, 40_000) * 0.1,
        "lengths": torch.tensor([40_000]),
        "notes": [torch.from_numpy(NOTES)],
        "key": ["piece"],
    }
    validate(mt3_solver(), batch, make_logger(kind, tmp_path, monkeypatch), tmp_path)
    (midi,) = tmp_path.rglob("media/*.mid")
    assert midi.read_bytes().startswith(b"MThd")
    assert tmp_path in midi.parents
    if kind == "tensorboard":
        images = tensorboard_media(tmp_path)["images"]
        assert list(images) == ["valid/piano_roll"] and images["valid/piano_roll"][0].ndim == 3
    else:
        assert len(wandb_files(tmp_path, "*.png")) == 1
        assert [p.name for p in wandb_files(tmp_path, "*.mid")] == [midi.name]
