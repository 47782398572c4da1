"""The .ecdc container and the compress / decompress command lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen.compress import main as compress_main
from musicgen.compression import CodecConfig, CompressionModel
from musicgen.compression.container import MAGIC, pack_codes, read_ecdc, unpack_codes
from musicgen.decompress import main as decompress_main
from musicgen.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIG = CodecConfig(
    sample_rate=16000,
    ratios=(8, 5, 4, 2),
    n_filters=4,
    dimension=16,
    n_q=4,
    bins=512,
    lstm=0,
    kmeans_iters=2,
)


@pytest.mark.parametrize("bits", [1, 7, 10, 11, 16])
def test_codes_pack_and_unpack(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 2**bits, size=(3, 37))
    payload = pack_codes(codes, bits)
    assert len(payload) == -(-codes.size * bits // 8)
    assert np.array_equal(unpack_codes(payload, codes.size, bits).reshape(codes.shape), codes)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = CompressionModel(CONFIG)
    model(0.1 * torch.randn(2, 1, 16000))  # initialise the codebooks
    return model.save(tmp_path_factory.mktemp("codec") / "codec")


def test_compress_decompress_round_trip(codec_dir: Path, tmp_path: Path) -> None:
    wav = 0.2 * np.sin(
        2 * np.pi * 330 * np.arange(22050) / 22050
    )  # 1 s at another rate, resampled on the way in
    sf.write(tmp_path / "in.wav", wav, 22050)
    assert (
        compress_main(
            [
                str(tmp_path / "in.wav"),
                str(tmp_path / "a.ecdc"),
                "--checkpoint",
                str(codec_dir),
                "--bandwidth",
                "1.0",
            ]
        )
        == 0
    )
    header, codes = read_ecdc(tmp_path / "a.ecdc")
    assert (tmp_path / "a.ecdc").read_bytes()[:4] == MAGIC
    assert (
        header["n_q"] == 2
        and header["bandwidth_kbps"] == pytest.approx(0.9)
        and header["length"] == 16000
    )
    assert header["model"] == CONFIG.to_dict() and codes.shape == (2, 50)
    assert decompress_main([str(tmp_path / "a.ecdc"), str(tmp_path / "out.wav")]) == 0
    decoded, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 16000 and decoded.shape == (16000,)
    model = CompressionModel.load(codec_dir)
    expected = model.decode(codes.unsqueeze(0), 16000)[0, 0].clamp(-1, 1).numpy()
    assert np.abs(decoded - expected).max() < 2e-4  # 16-bit PCM


def test_command_line_entry_points(codec_dir: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", np.zeros(8000), 16000)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True
        )

    result = run(
        "musicgen.compress",
        str(tmp_path / "in.wav"),
        str(tmp_path / "b.ecdc"),
        "--checkpoint",
        str(codec_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "1.8 kbps" in result.stdout
    assert (
        run("musicgen.decompress", str(tmp_path / "b.ecdc"), str(tmp_path / "b.wav")).returncode
        == 0
    )
    assert sf.info(tmp_path / "b.wav").frames == 8000
    missing = run(
        "musicgen.compress",
        str(tmp_path / "in.wav"),
        str(tmp_path / "c.ecdc"),
        "--checkpoint",
        str(tmp_path / "nope"),
    )
    assert (
        missing.returncode == 2
        and f"codec checkpoint {tmp_path / 'nope'} does not exist" in missing.stderr
    )


def test_decompress_names_what_is_wrong(codec_dir: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", np.zeros(4000), 16000)
    compress_main(
        [str(tmp_path / "in.wav"), str(tmp_path / "a.ecdc"), "--checkpoint", str(codec_dir)]
    )
    data = bytearray((tmp_path / "a.ecdc").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "bad.ecdc").write_bytes(bytes(data))
    with pytest.raises(UserError, match="is damaged"):
        read_ecdc(tmp_path / "bad.ecdc")
    (tmp_path / "x.ecdc").write_bytes(b"RIFF....")
    with pytest.raises(UserError, match="is not an .ecdc file"):
        read_ecdc(tmp_path / "x.ecdc")
    other = CompressionModel(CONFIG).save(tmp_path / "other")
    assert (
        decompress_main(
            [str(tmp_path / "a.ecdc"), str(tmp_path / "o.wav"), "--checkpoint", str(other)]
        )
        == 2
    )
