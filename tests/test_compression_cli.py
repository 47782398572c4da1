"""The .ecdc container and the compress / decompress command lines, including every user error."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen.compress import main as compress_main
from musicgen.compression import OFFICIAL, CodecConfig, CompressionModel
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


def _saved(config: CodecConfig, directory: Path) -> Path:
    torch.manual_seed(0)
    model = CompressionModel(config)
    model(0.1 * torch.randn(2, config.channels, 16000))  # initialise the codebooks
    return model.save(directory)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _saved(CONFIG, tmp_path_factory.mktemp("codec") / "codec")


@pytest.fixture(scope="module")
def stereo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _saved(
        CodecConfig(**{**CONFIG.to_dict(), "channels": 2}), tmp_path_factory.mktemp("c") / "st"
    )


def _error(capsys: pytest.CaptureFixture, code: int) -> str:
    """The one `error:` line a failed command printed (and nothing else on stderr)."""
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_compress_decompress_round_trip(codec_dir: Path, tmp_path: Path) -> None:
    wav = 0.2 * np.sin(
        2 * np.pi * 330 * np.arange(22050) / 22050
    )  # 1 s at another rate, resampled on the way in
    sf.write(tmp_path / "in.wav", wav, 22050)
    args = ["--checkpoint", str(codec_dir)]
    assert (
        compress_main(
            [str(tmp_path / "in.wav"), str(tmp_path / "a.ecdc"), *args, "--bandwidth", "0.9"]
        )
        == 0
    )
    header, codes, scales = read_ecdc(tmp_path / "a.ecdc")
    assert (tmp_path / "a.ecdc").read_bytes()[:4] == MAGIC
    assert (header["n_q"], header["bandwidth_kbps"], header["length"]) == (2, 0.9, 16000)
    assert codes.shape == (2, 50) and scales is None
    assert decompress_main([str(tmp_path / "a.ecdc"), str(tmp_path / "out.wav"), *args]) == 0
    decoded, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 16000 and decoded.shape == (16000,)
    model = CompressionModel.load(codec_dir)
    expected = model.decode(codes.unsqueeze(0), 16000)[0, 0].clamp(-1, 1).numpy()
    assert np.abs(decoded - expected).max() < 2e-4  # 16-bit PCM


def test_header_names_the_codec_without_machine_paths(codec_dir: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", np.zeros(4000), 16000)
    compress_main(
        [str(tmp_path / "in.wav"), str(tmp_path / "a.ecdc"), "--checkpoint", str(codec_dir)]
    )
    data = (tmp_path / "a.ecdc").read_bytes()
    (size,) = struct.unpack(">I", data[5:9])
    header = json.loads(data[9 : 9 + size])
    assert (
        size < 250 and str(tmp_path).encode() not in data and "/" not in data[9 : 9 + size].decode()
    )
    assert header["codec"] == "custom"
    assert header["codec_sha256"] == CompressionModel.load(codec_dir).digest()


def test_command_line_entry_points(codec_dir: Path, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", np.zeros(8000), 16000)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True
        )

    ckpt = ("--checkpoint", str(codec_dir))
    result = run("musicgen.compress", str(tmp_path / "in.wav"), str(tmp_path / "b.ecdc"), *ckpt)
    assert result.returncode == 0, result.stderr
    assert "1.8 kbps" in result.stdout
    result = run("musicgen.decompress", str(tmp_path / "b.ecdc"), str(tmp_path / "b.wav"), *ckpt)
    assert result.returncode == 0, result.stderr
    assert sf.info(tmp_path / "b.wav").frames == 8000
    missing = run(
        "musicgen.compress",
        str(tmp_path / "in.wav"),
        str(tmp_path / "c.ecdc"),
        "--checkpoint",
        str(tmp_path / "nope"),
    )
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith(f"error: codec checkpoint {tmp_path / 'nope'} does not exist")


def _checkpoints(tmp_path: Path) -> dict[str, Path]:
    """Files that are not codec checkpoints, by what is wrong with them."""
    sf.write(tmp_path / "audio.wav", np.zeros(100), 16000)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    torch.save(
        {"state_dict": {"w": torch.zeros(3)}, "hyper_parameters": {"lr": 1}},
        tmp_path / "other.ckpt",
    )
    data = (tmp_path / "other.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"codec": CONFIG.to_dict()}},
        tmp_path / "noweights.ckpt",
    )
    torch.save({"a": torch.nn.Linear(1, 1)}, tmp_path / "unsafe.ckpt")
    return {
        "does not exist": tmp_path / "missing.ckpt",
        "audio.wav": tmp_path / "audio.wav",
        "is a bare weights file: pass the folder": tmp_path / "model.safetensors",
        "is empty": tmp_path / "empty.ckpt",
        "garbage.ckpt": tmp_path / "garbage.ckpt",
        "not a checkpoint of solver=compression": tmp_path / "other.ckpt",
        "truncated.ckpt cannot be read": tmp_path / "truncated.ckpt",
        "do not fit its codec config": tmp_path / "noweights.ckpt",
        "holds objects other than tensors": tmp_path / "unsafe.ckpt",
    }


def test_bad_checkpoints_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sf.write(tmp_path / "in.wav", np.zeros(4000), 16000)
    for message, path in _checkpoints(tmp_path).items():
        code = compress_main(
            [str(tmp_path / "in.wav"), str(tmp_path / "o.ecdc"), "--checkpoint", str(path)]
        )
        line = _error(capsys, code)
        assert message in line and "weights_only=False" not in line, line
        assert "pass " in line.split(str(path))[-1], line  # ... and the fix
    assert not (tmp_path / "o.ecdc").exists()


def _audio_files(tmp_path: Path) -> dict[str, Path]:
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1)), 16000)
    sf.write(tmp_path / "six.wav", np.zeros((1600, 6)), 16000)
    noisy = np.zeros(1600, dtype=np.float32)
    noisy[10], noisy[20] = np.nan, np.inf
    sf.write(tmp_path / "nan.wav", noisy, 16000, subtype="FLOAT")
    (tmp_path / "text.wav").write_text("not audio")
    return {
        "does not exist": tmp_path / "missing.wav",
        "has no samples": tmp_path / "empty.wav",
        "has 6 channels, this model takes 2 (or mono)": tmp_path / "six.wav",
        "holds NaN or infinite samples": tmp_path / "nan.wav",
        "cannot read audio file": tmp_path / "text.wav",
    }


def test_bad_audio_is_one_error_line(
    stereo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for message, path in _audio_files(tmp_path).items():
        code = compress_main([str(path), str(tmp_path / "o.ecdc"), "--checkpoint", str(stereo_dir)])
        assert message in _error(capsys, code)
    sf.write(tmp_path / "mono.wav", np.zeros(1600), 16000)
    code = compress_main(
        [str(tmp_path / "mono.wav"), str(tmp_path / "o.ecdc"), "--checkpoint", str(stereo_dir)]
    )
    note = capsys.readouterr().err
    assert code == 0 and note.startswith("note: ") and "duplicated" in note
    assert read_ecdc(tmp_path / "o.ecdc")[0]["channels"] == 2


def test_output_in_a_missing_folder(
    codec_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sf.write(tmp_path / "in.wav", np.zeros(1600), 16000)
    ckpt = ["--checkpoint", str(codec_dir)]
    code = compress_main([str(tmp_path / "in.wav"), str(tmp_path / "no" / "o.ecdc"), *ckpt])
    assert "does not exist: create it" in _error(capsys, code)
    code = compress_main([str(tmp_path / "in.wav"), str(tmp_path), *ckpt])
    assert "is a folder" in _error(capsys, code)
    assert compress_main([str(tmp_path / "in.wav"), str(tmp_path / "o.ecdc"), *ckpt]) == 0
    code = decompress_main([str(tmp_path / "o.ecdc"), str(tmp_path / "no" / "o.wav"), *ckpt])
    assert "does not exist: create it" in _error(capsys, code)


@pytest.mark.parametrize("bandwidth", ["0", "-3", "0.5", "100", "nan"])
def test_bandwidths_the_codec_does_not_offer(
    codec_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, bandwidth: str
) -> None:
    sf.write(tmp_path / "in.wav", np.zeros(1600), 16000)
    code = compress_main(
        [
            str(tmp_path / "in.wav"),
            str(tmp_path / "o.ecdc"),
            "--checkpoint",
            str(codec_dir),
            "--bandwidth",
            bandwidth,
        ]
    )
    assert "the custom codec offers 0.45, 0.9, 1.35, 1.8 kbps" in _error(capsys, code)


def test_official_bandwidths_are_the_encodec_packages() -> None:
    model = CompressionModel(OFFICIAL["encodec_48khz"])
    assert model.bandwidths == (3.0, 6.0, 12.0, 24.0) and model.codebooks_for(6) == 4
    with pytest.raises(UserError, match=r"offers 3, 6, 12, 24 kbps, not 1.5"):
        model.codebooks_for(1.5)


@pytest.fixture()
def ecdc(codec_dir: Path, tmp_path: Path) -> Path:
    sf.write(tmp_path / "in.wav", 0.1 * np.random.default_rng(0).standard_normal(4000), 16000)
    compress_main(
        [str(tmp_path / "in.wav"), str(tmp_path / "a.ecdc"), "--checkpoint", str(codec_dir)]
    )
    return tmp_path / "a.ecdc"


def _rewrite(path: Path, change: Callable[[dict], object], codes: np.ndarray | None = None) -> Path:
    """A copy of ``path`` with its header changed (and, given ``codes``, a consistent payload)."""
    data = path.read_bytes()
    (size,) = struct.unpack(">I", data[5:9])
    header = json.loads(data[9 : 9 + size])
    payload = data[9 + size :]
    change(header)
    if codes is not None:
        payload = pack_codes(codes, header["bits"])
        header.update(n_q=codes.shape[0], frames=codes.shape[1], payload_crc32=zlib.crc32(payload))
    blob = json.dumps(header).encode()
    out = path.with_name("edited.ecdc")
    out.write_bytes(data[:5] + struct.pack(">I", len(blob)) + blob + payload)
    return out


def _damaged(ecdc: Path) -> dict[str, Path]:
    """Damaged copies of ``ecdc``, by the message that names what is wrong."""
    data = ecdc.read_bytes()
    (size,) = struct.unpack(">I", data[5:9])
    payload = data[9 + size :]
    blobs = {
        "is empty": b"",
        "is truncated (5 bytes": data[:5],
        "header length field says": data[:5] + struct.pack(">I", 10**6) + data[9:],
        "payload is": data[:-3],
        "header is not valid JSON": data[:9] + b"{" * size + payload,
        "header is not a JSON object": data[:5] + struct.pack(">I", 9) + b"[1, 2, 3]" + payload,
        "payload checksum mismatch": data[:-1] + bytes([data[-1] ^ 0xFF]),
        "is not an .ecdc file": b"RIFF....",
        ".ecdc version 1, this reader knows 2": data[:4] + b"\x01" + data[5:],
    }
    out = {}
    for index, (message, blob) in enumerate(blobs.items()):
        out[message] = ecdc.with_name(f"bad{index}.ecdc")
        out[message].write_bytes(blob)
    edits: dict[str, tuple[Callable[[dict], object], np.ndarray | None]] = {
        "header lacks codec_sha256, frames": (
            lambda h: [h.pop("frames"), h.pop("codec_sha256")],
            None,
        ),
        "invalid header values n_q='4'": (lambda h: h.update(n_q="4"), None),
        "invalid header values frames=0": (lambda h: h.update(frames=0), None),
        "(n_q, frames, bits, scales) describes 44": (lambda h: h.update(n_q=3, bits=9), None),
        "(n_q, frames, bits, scales) describes 52": (lambda h: h.update(bits=8), None),
        "frames=14 (expected 13)": (lambda h: None, np.zeros((4, 14), dtype=np.int64)),
        "n_q=6 but the codec has 4 codebooks": (lambda h: None, np.zeros((6, 13), dtype=np.int64)),
        "codes can exceed the codebook size 512": (
            lambda h: h.update(bits=10),
            np.full((4, 13), 1000),
        ),
        "sample_rate=8000 (expected 16000)": (lambda h: h.update(sample_rate=8000), None),
    }
    for index, (message, (change, codes)) in enumerate(edits.items()):
        out[message] = _rewrite(ecdc, change, codes).rename(ecdc.with_name(f"edit{index}.ecdc"))
    return out


def test_damaged_ecdc_files_are_one_error_line(
    ecdc: Path, codec_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    out = str(ecdc.parent / "o.wav")
    for message, path in {"does not exist": ecdc.parent / "missing.ecdc", **_damaged(ecdc)}.items():
        code = decompress_main([str(path), out, "--checkpoint", str(codec_dir)])
        line = _error(capsys, code)
        assert message in line and "compress" in line, (message, line)
    assert not Path(out).exists()


def test_decompress_names_the_codec_to_pass(
    ecdc: Path, codec_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    out = str(ecdc.parent / "o.wav")
    line = _error(capsys, decompress_main([str(ecdc), out]))
    assert "compressed with a custom codec (digest " in line and "pass --checkpoint" in line
    official = _rewrite(ecdc, lambda h: h.update(codec="encodec_24khz"))
    line = _error(capsys, decompress_main([str(official), out]))
    assert (
        "official encodec_24khz codec: pass --checkpoint <folder>/encodec_24khz-d7cc33bc.th" in line
    )
    other = CompressionModel(CONFIG).save(ecdc.parent / "other")
    line = _error(capsys, decompress_main([str(ecdc), out, "--checkpoint", str(other)]))
    assert "is not the codec" in line and "pass --checkpoint with that codec" in line
    assert decompress_main([str(ecdc), out, "--checkpoint", str(codec_dir)]) == 0


def test_read_ecdc_raises_user_errors(ecdc: Path) -> None:
    (ecdc.parent / "x.ecdc").write_bytes(b"RIFF....")
    with pytest.raises(UserError, match="is not an .ecdc file"):
        read_ecdc(ecdc.parent / "x.ecdc")
    with pytest.raises(UserError, match="is a folder"):
        read_ecdc(ecdc.parent)
