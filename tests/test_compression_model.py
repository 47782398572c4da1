"""CompressionModel: shapes per config, bandwidths, the RVQ fix, our save format and official weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from encodec import EncodecModel
from encodec.quantization import ResidualVectorQuantizer
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from musicgen.compression import (
    OFFICIAL,
    CodecConfig,
    CompressionModel,
    FixedResidualVectorQuantizer,
    codebook_stats,
)
from musicgen.compression.checkpoint import WEIGHTS_FILE
from musicgen.errors import UserError
from solvers.runtime import register_resolvers

REPO = Path(__file__).resolve().parents[1]
SMALL = CodecConfig(
    sample_rate=16000,
    ratios=(8, 5, 4, 2),
    n_filters=4,
    dimension=16,
    n_q=4,
    bins=64,
    lstm=0,
    kmeans_iters=2,
)


def solver_codec(*overrides: str) -> CodecConfig:
    register_resolvers()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return CodecConfig.from_dict(OmegaConf.to_container(cfg.solver.module.codec, resolve=True))


@pytest.mark.parametrize(
    "overrides,rate,hop,frame_rate",
    [
        (["solver=compression"], 32000, 640, 50),
        (["solver=compression_encodec24"], 24000, 320, 75),
        (["experiment=compression_tiny"], 32000, 256, 125),
        (["experiment=compression_tiny", "solver.data.sample_rate=16000"], 16000, 256, 62.5),
    ],
)
def test_encode_decode_shapes_and_frame_rate(
    overrides: list[str], rate: int, hop: int, frame_rate: float
) -> None:
    config = solver_codec(*overrides)
    assert (config.sample_rate, config.hop_length, config.frame_rate) == (rate, hop, frame_rate)
    model = CompressionModel(config).eval()
    wav = 0.1 * torch.randn(2, 1, rate * 2 // 5)  # 0.4 s: a whole number of frames in every config
    codes = model.encode(wav)
    assert codes.shape == (2, config.n_q, int(frame_rate * 0.4)) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < model.cardinality
    assert model.decode(codes).shape == wav.shape
    assert model.decode(codes[:, :, :-1], 100).shape == (2, 1, 100)


def test_the_musicgen_codec_defaults() -> None:
    config = solver_codec("solver=compression")
    assert (config.ratios, config.n_filters, config.n_q, config.bins, config.channels) == (
        (8, 5, 4, 4),
        64,
        4,
        2048,
        1,
    )
    assert config.kbps(4) == pytest.approx(2.2)


def test_bandwidth_selects_the_number_of_codebooks() -> None:
    model = CompressionModel(OFFICIAL["encodec_24khz"]).eval()
    assert [model.n_q_for_bandwidth(b) for b in (1.5, 3, 6, 12, 24)] == [2, 4, 8, 16, 32]
    assert model.n_q_for_bandwidth(0.1) == 1 and model.n_q_for_bandwidth(100) == 32
    assert model.config.kbps(8) == pytest.approx(6.0)
    codes = model.encode(torch.randn(1, 1, 2400), model.n_q_for_bandwidth(6))
    assert codes.shape[1] == 8
    with pytest.raises(ValueError, match="n_q must be in"):
        model.encode(torch.randn(1, 1, 2400), 33)


def _quantizers() -> tuple[ResidualVectorQuantizer, FixedResidualVectorQuantizer]:
    torch.manual_seed(0)
    args = dict(dimension=8, n_q=3, bins=16, kmeans_init=False, threshold_ema_dead_code=0)
    package, fixed = ResidualVectorQuantizer(**args), FixedResidualVectorQuantizer(**args)
    fixed.load_state_dict(package.state_dict())
    return package.train(), fixed.train()


def test_rvq_fix_keeps_the_gradient_of_every_residual() -> None:
    package, fixed = _quantizers()
    codebooks = [
        layer._codebook.embed.clone() for layer in fixed.vq.layers
    ]  # before the EMA updates
    x = torch.randn(2, 8, 5)
    x_package, x_fixed = x.clone().requires_grad_(), x.clone().requires_grad_()
    theirs = package(x_package, sample_rate=1, bandwidth=None)
    ours = fixed(x_fixed, 3)
    assert torch.equal(theirs.codes.transpose(0, 1), ours.codes)
    assert torch.allclose(theirs.quantized, ours.quantized)

    # Straight-through: both pass the output gradient to the input unchanged.
    (grad_package,) = torch.autograd.grad(theirs.quantized.sum(), x_package, retain_graph=True)
    (grad_fixed,) = torch.autograd.grad(ours.quantized.sum(), x_fixed, retain_graph=True)
    assert torch.allclose(grad_package, torch.ones_like(x)) and torch.allclose(
        grad_fixed, torch.ones_like(x)
    )

    # Commitment: mean over stages of MSE(residual_c, q_c); with the fix every residual x - sum(q_<c)
    # depends on x, in the package only the first stage's does (encodec issue #25).
    residual, expected, first_only = x.clone(), torch.zeros_like(x), None
    for stage, codebook in enumerate(codebooks):
        q = codebook[ours.codes[:, stage]].transpose(1, 2)
        grad = 2 * (residual - q) / residual.numel() / len(codebooks)
        expected += grad
        first_only = grad if stage == 0 else first_only
        residual = residual - q
    (commit_fixed,) = torch.autograd.grad(ours.commitment, x_fixed)
    (commit_package,) = torch.autograd.grad(theirs.penalty, x_package)
    assert torch.allclose(commit_fixed, expected, atol=1e-6)
    assert torch.allclose(commit_package, first_only, atol=1e-6)
    assert not torch.allclose(commit_package, commit_fixed, atol=1e-6)


def test_dead_code_replacement_survives_the_ema_update() -> None:
    torch.manual_seed(0)
    args = dict(dimension=4, n_q=1, bins=8, kmeans_init=False, threshold_ema_dead_code=2)
    package, fixed = (
        ResidualVectorQuantizer(**args).train(),
        FixedResidualVectorQuantizer(**args).train(),
    )
    fixed.load_state_dict(package.state_dict())  # all codes start dead (cluster size 0 < 2)
    x = torch.randn(1, 4, 3)
    package(x, sample_rate=1)
    fixed(x, 1)
    samples = x.transpose(1, 2).reshape(-1, 4)

    def distance(embed: torch.Tensor) -> torch.Tensor:  # from each code to the nearest batch vector
        return torch.cdist(embed, samples).min(dim=1).values

    assert (
        distance(fixed.vq.layers[0]._codebook.embed) < 0.05
    ).all()  # each code now is a batch vector
    assert (
        distance(package.vq.layers[0]._codebook.embed) > 10
    ).all()  # stale statistics blew them up
    assert fixed.dead_codes().item() < 8


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(UserError, match="unknown codec config keys \\['n_filter'\\]"):
        CodecConfig.from_dict({"n_filter": 4})
    with pytest.raises(UserError, match="power of 2"):
        CodecConfig(bins=1000)
    assert CodecConfig.from_dict(SMALL.to_dict()) == SMALL


def test_codebook_stats_and_dead_codes() -> None:
    codes = torch.tensor([[[0, 1, 2, 3]], [[0, 0, 0, 0]]]).transpose(0, 1).reshape(1, 2, 4)
    stats = codebook_stats(codes, bins=4)
    assert stats["codebook_usage"].item() == pytest.approx((4 / 4 + 1 / 4) / 2)
    assert stats["codebook_perplexity"].item() == pytest.approx((4 + 1) / 2)
    assert FixedResidualVectorQuantizer(dimension=4, n_q=2, bins=8).dead_codes().item() == 16


def test_save_load_round_trip_gives_identical_codes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CompressionModel(SMALL)
    model(0.1 * torch.randn(2, 1, 8000))  # k-means initialises the codebooks
    model.eval()
    wav = 0.1 * torch.randn(1, 1, 8000)
    model.save(tmp_path / "codec")
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == ["config.json", WEIGHTS_FILE]
    for loaded in (
        CompressionModel.load(tmp_path / "codec"),
        CompressionModel.from_checkpoint(tmp_path / "codec"),
    ):
        assert loaded.config == model.config
        assert torch.equal(loaded.encode(wav), model.encode(wav))
        assert torch.equal(loaded.decode(model.encode(wav)), model.decode(model.encode(wav)))
    with pytest.raises(UserError, match="is not a saved codec"):
        CompressionModel.load(tmp_path)


def _official_layout(repository: Path) -> EncodecModel:
    """A randomly initialised official 24 kHz model (with non-trivial codebooks), saved like the release."""
    torch.manual_seed(0)
    official = EncodecModel.encodec_model_24khz(pretrained=False)
    for layer in official.quantizer.vq.layers:
        layer._codebook.embed.normal_()
        layer._codebook.inited.fill_(1)
    torch.save(official.state_dict(), repository / "encodec_24khz-d7cc33bc.th")
    return official


def test_from_pretrained_loads_the_official_layout(tmp_path: Path) -> None:
    official = _official_layout(tmp_path)
    model = CompressionModel.from_pretrained("encodec_24khz", repository=tmp_path, check_hash=False)
    assert (model.sample_rate, model.frame_rate, model.num_codebooks, model.cardinality) == (
        24000,
        75,
        32,
        1024,
    )
    wav = 0.1 * torch.randn(1, 1, 24000)
    official.set_target_bandwidth(6.0)
    with torch.no_grad():
        ((their_codes, _),) = official.encode(wav)
        their_audio = official.decode([(their_codes, None)])
    ours = model.encode(wav, model.n_q_for_bandwidth(6.0))
    assert torch.equal(ours, their_codes) and len(ours.unique()) > 1
    assert torch.allclose(model.decode(ours), their_audio, atol=1e-5)


def test_from_pretrained_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="encodec_48khz-7e698e3e.th does not exist: download"):
        CompressionModel.from_pretrained("encodec_48khz", repository=tmp_path)
    with pytest.raises(UserError, match="unknown pretrained codec"):
        CompressionModel.from_pretrained("encodec_12khz", repository=tmp_path)
    _official_layout(tmp_path)
    with pytest.raises(UserError, match="does not match its published sha256 prefix d7cc33bc"):
        CompressionModel.from_pretrained("encodec_24khz", repository=tmp_path)
    with pytest.raises(UserError, match="does not match its published sha256 prefix"):
        CompressionModel.from_checkpoint(tmp_path / "encodec_24khz-d7cc33bc.th")
