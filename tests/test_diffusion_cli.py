"""The diffusion decoder from MusicGen and the command lines: ``MusicGen.generate(decoder=
"diffusion")``, ``python -m musicgen.generate/decompress --decoder diffusion`` and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen.compress import main as compress_main
from musicgen.compression import CodecConfig, CompressionModel
from musicgen.decompress import main as decompress_main
from musicgen.diffusion import MultiBandDiffusion
from musicgen.diffusion.checkpoint import save_diffusion
from musicgen.errors import UserError
from musicgen.generate import main as generate_main
from musicgen.musicgen_model import MusicGen
from tests.test_musicgen_solver import TINY_LM, write_tiny_text_encoder

CODEC = CodecConfig(
    sample_rate=16000, ratios=(8, 5, 4, 2), n_filters=4, dimension=16, n_q=4, bins=64, lstm=0,
    kmeans_init=False,
)  # fmt: skip
UNET = dict(hidden=4, depth=2, kernel=8, stride=4, growth=2, norm_groups=2, emb_all_layers=True)
SCHEDULE = dict(beta_t0=1e-5, beta_t1=2.9e-2, beta_exp=7.5)


def diffusion(latent_dim: int = 16, n_q: int | None = 4) -> MultiBandDiffusion:
    torch.manual_seed(0)
    return MultiBandDiffusion(16000, 2, latent_dim, 320, UNET, SCHEDULE, {"use": False}, n_q=n_q)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusion_cli")
    torch.manual_seed(0)
    codec = CompressionModel(CODEC).save(root / "codec")
    sf.write(root / "in.wav", 0.1 * np.random.default_rng(0).standard_normal(5000), 16000)
    compress_main([str(root / "in.wav"), str(root / "in.ecdc"), "--checkpoint", str(codec)])
    return {
        "codec": codec,
        "ecdc": root / "in.ecdc",
        "mbd": save_diffusion(diffusion(), root / "mbd.ckpt"),
        "other": save_diffusion(diffusion(latent_dim=8), root / "other.ckpt"),
        "text": write_tiny_text_encoder(root / "text"),
    }


def one_error_line(capsys: pytest.CaptureFixture, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_decompress_with_the_diffusion_decoder(assets: dict, tmp_path: Path) -> None:
    base = [str(assets["ecdc"]), "--checkpoint", str(assets["codec"])]
    assert decompress_main([*base[:1], str(tmp_path / "codec.wav"), *base[1:]]) == 0
    diff = ["--decoder", "diffusion", "--diffusion-checkpoint", str(assets["mbd"])]
    for name, steps in (("a", "3"), ("b", "3"), ("c", "1")):
        out = str(tmp_path / f"{name}.wav")
        assert decompress_main([base[0], out, *base[1:], *diff, "--diffusion-steps", steps]) == 0
    codec, rate = sf.read(tmp_path / "codec.wav")
    a, _ = sf.read(tmp_path / "a.wav")
    b, _ = sf.read(tmp_path / "b.wav")
    c, _ = sf.read(tmp_path / "c.wav")
    assert rate == 16000 and a.shape == codec.shape == (5000,)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, codec)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--decoder", "diffusion"], "needs --diffusion-checkpoint"),
        (["--decoder", "diffusion", "--diffusion-checkpoint", "missing.ckpt"], "does not exist"),
        (["--diffusion-checkpoint", "x.ckpt"], "only used with --decoder diffusion"),
        (
            ["--decoder", "diffusion", "--diffusion-checkpoint", "x", "--diffusion-steps", "0"],
            "steps",
        ),
        (["--decoder", "diffusion", "--diffusion-checkpoint", "OTHER"], "latent_dim 8 vs 16"),
    ],
)
def test_decompress_decoder_errors_are_one_line(
    assets: dict, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    extra = [str(assets["other"]) if arg == "OTHER" else arg for arg in extra]
    args = [str(assets["ecdc"]), str(tmp_path / "o.wav"), "--checkpoint", str(assets["codec"])]
    assert message in one_error_line(capsys, decompress_main([*args, *extra]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--decoder", "diffusion"], "needs --diffusion-checkpoint"),
        (["--decoder", "diffusion", "--diffusion-checkpoint", "missing.ckpt"], "does not exist"),
    ],
)
def test_generate_decoder_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    args = ["--checkpoint", "unused.ckpt", "--text", "calm", "--out", str(tmp_path / "o.wav")]
    assert message in one_error_line(capsys, generate_main([*args, *extra]))


def test_generate_command_with_the_diffusion_decoder(assets: dict, tmp_path: Path) -> None:
    from tests.test_musicgen_generate import checkpoint

    ckpt = checkpoint(
        {"codec": assets["codec"], "text": assets["text"]}, tmp_path / "t.ckpt", False
    )
    args = ["--checkpoint", str(ckpt), "--text", "calm", "--duration", "0.2", "--top-k", "5"]
    diff = ["--decoder", "diffusion", "--diffusion-checkpoint", str(assets["mbd"])]
    assert generate_main([*args, "--out", str(tmp_path / "c.wav")]) == 0
    assert (
        generate_main([*args, "--out", str(tmp_path / "d.wav"), *diff, "--diffusion-steps", "2"])
        == 0
    )
    codec, rate = sf.read(tmp_path / "c.wav")
    ours, _ = sf.read(tmp_path / "d.wav")
    assert (
        rate == 16000 and ours.shape == codec.shape == (3200,) and not np.array_equal(ours, codec)
    )


def test_musicgen_generate_decodes_with_diffusion(assets: dict) -> None:
    codec = CompressionModel.from_checkpoint(assets["codec"])
    torch.manual_seed(0)
    model = MusicGen.build(codec, {**TINY_LM, "n_q": 4}, {"local_dir": str(assets["text"])}, None)

    def run(decoder: str, seed: int = 0, **options) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return model.generate(
            ["calm"], duration=0.1, top_k=5, generator=generator, decoder=decoder, **options
        )

    plain = run("codec")
    a = run("diffusion", diffusion=assets["mbd"], diffusion_steps=2)
    b = run("diffusion", diffusion=diffusion(), diffusion_steps=2)  # the model, not its path
    assert a.shape == plain.shape == (1, 1, 1600)
    assert torch.equal(a, b) and not torch.equal(a, plain)
    with pytest.raises(UserError, match="needs diffusion="):
        run("diffusion")
    with pytest.raises(UserError, match="n_q 2 vs 4"):
        run("diffusion", diffusion=diffusion(n_q=2))
