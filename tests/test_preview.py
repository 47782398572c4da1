"""python -m data.preview: the mix, its spectrogram, and (--melody) the melody stems and caption."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from data.preview import main
from musicgen.audio import convert_audio
from tests.fixtures.toy_shards import RATE


def test_preview_writes_mix_png_melody_and_caption(toy_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview"
    assert main([str(toy_dataset), "--split", "test", "--out", str(out), "--melody"]) == 0
    (wav,) = out.glob("*[!y].wav")
    key = wav.stem
    assert {p.name for p in out.iterdir()} == {
        f"{key}.wav",
        f"{key}.png",
        f"{key}.melody.wav",
        f"{key}.txt",
    }
    mix, rate = sf.read(wav)
    melody, _ = sf.read(out / f"{key}.melody.wav")
    assert rate == 32000 and melody.shape == mix.shape
    with tarfile.open(next(toy_dataset.glob("test-*.tar"))) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert (out / f"{key}.txt").read_text().strip() == json.loads(members[f"{key}.json"])["caption"]
    stems = [sf.read(io.BytesIO(members[f"{key}.{s}.flac"]))[0] for s in ("vocals", "other")]
    summed = torch.from_numpy(np.sum(stems, axis=0)).float().reshape(1, -1)
    expected = convert_audio(summed, RATE, 32000, 1)[0, : len(melody)].numpy()
    np.testing.assert_allclose(melody, expected, atol=1e-4)
