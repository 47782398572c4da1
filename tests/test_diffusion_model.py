"""musicgen.diffusion: schedule, forward process, bands, training, sampling, checkpoints, and
AudioCraft's released-weights layout (against AudioCraft's own code when its source is there)."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from musicgen.diffusion import MultiBandDiffusion, load_diffusion
from musicgen.diffusion.bands import merge_bands, split_bands
from musicgen.diffusion.checkpoint import save_diffusion
from musicgen.diffusion.reference import SKIP_REASON, audiocraft_dir, load_modules
from musicgen.diffusion.schedule import NoiseSchedule
from musicgen.errors import UserError

RATE, LATENT, HOP, BANDS = 8000, 6, 64, 2
UNET = dict(hidden=4, depth=2, kernel=8, stride=4, growth=2, norm_groups=2, emb_all_layers=True)
# AudioCraft's config/solver/diffusion/default.yaml schedule
SCHEDULE = dict(
    beta_t0=1e-5, beta_t1=2.9e-2, beta_exp=7.5, num_steps=1000, variance="beta", clip=5.0
)
# AudioCraft's DiffusionUnet state-dict names for UNET (read from its models/unet.py)
AUDIOCRAFT_UNET_KEYS = {
    *(
        f"{side}.{i}.res_blocks.0.{layer}.{p}"
        for side in ("encoders", "decoders")
        for i in (0, 1)
        for layer in ("norm1", "conv1", "norm2", "conv2")
        for p in ("weight", "bias")
    ),
    *(f"encoders.{i}.{p}" for i in (0, 1) for p in ("conv.weight", "norm.weight", "norm.bias")),
    *(f"decoders.{i}.{p}" for i in (0, 1) for p in ("norm.weight", "norm.bias", "convtr.weight")),
    "embedding.weight",
    "embeddings.0.weight",
    "conv_codec.weight",
    "conv_codec.bias",
}
AUDIOCRAFT_PROCESSOR_KEYS = {
    "counts",
    "sum_x",
    "sum_x2",
    "sum_target_x2",
    "split_bands.lowpass.filters",
}


def tiny(processor: dict | list | None = None) -> MultiBandDiffusion:
    torch.manual_seed(0)
    return MultiBandDiffusion(
        RATE,
        BANDS,
        LATENT,
        HOP,
        UNET,
        SCHEDULE,
        processor or {"use": True, "n_bands": 4, "power_std": 0.75},
    )


def fit_processors(model: MultiBandDiffusion) -> None:
    wav = torch.randn(4, 1, 2048, generator=torch.Generator().manual_seed(1))
    model.train()
    for band, processor in zip(model.split(wav), model.processors, strict=True):
        processor.project_sample(band)
    model.eval()


def test_schedule_follows_the_power_formula() -> None:
    s = NoiseSchedule(**SCHEDULE)
    t = torch.arange(1000, dtype=torch.float64) / 999
    lo, hi = 1e-5 ** (1 / 7.5), 2.9e-2 ** (1 / 7.5)
    expected = (lo + t * (hi - lo)) ** 7.5
    torch.testing.assert_close(s.betas.double(), expected, rtol=2e-5, atol=0)
    assert s.betas[0].item() == pytest.approx(1e-5, rel=1e-5)
    assert s.betas[-1].item() == pytest.approx(2.9e-2, rel=1e-5)
    bar = torch.cumprod(1 - expected, 0)
    torch.testing.assert_close(s.alpha_bar().double(), bar, rtol=1e-4, atol=1e-7)
    assert s.alpha_bar(499).item() == pytest.approx(bar[499].item(), rel=1e-4)
    assert s.step_list(20) == [*list(range(1000))[::-50], 0]  # AudioCraft's default chain
    assert s.step_list(1) == [999, 0]
    assert s.step_list(10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0]
    with pytest.raises(ValueError):
        s.step_list(0)


def test_forward_process_matches_its_closed_form() -> None:
    s = NoiseSchedule(**SCHEDULE)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((1, 1, 200_000), 0.7)
    for step in (0, 300, 700, 999):
        noise = torch.randn(x0.shape, generator=gen)
        xt = s.noisy(x0, torch.tensor([step]), noise)
        bar = math.prod(1 - b for b in s.betas[: step + 1].double().tolist())
        assert xt.mean().item() == pytest.approx(math.sqrt(bar) * 0.7, abs=5e-3)
        assert xt.var().item() == pytest.approx(1 - bar, abs=1e-2 * max(1 - bar, 1e-2))


def test_band_split_then_merge_is_the_identity() -> None:
    wav = torch.randn(2, 2, 3001, generator=torch.Generator().manual_seed(0))
    bands = split_bands(wav, 32000, 4)
    assert bands.shape == (4, 2, 2, 3001)
    torch.testing.assert_close(merge_bands(bands), wav, atol=1e-5, rtol=0)
    # the bands are distinct frequency ranges: the lowest holds little of white noise's energy
    assert bands[0].pow(2).mean() < 0.2 * wav.pow(2).mean()


def test_a_training_step_lowers_the_loss_on_a_fixed_batch() -> None:
    model = tiny().train()
    gen = torch.Generator().manual_seed(3)
    wav = torch.randn(4, 1, 16 * HOP, generator=gen) * 0.3
    latent = torch.randn(4, LATENT, 16, generator=gen)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return model.training_loss(wav, latent, torch.Generator().manual_seed(0))

    before = loss().item()
    for _ in range(15):
        optim.zero_grad()
        loss().backward()
        optim.step()
    assert loss().item() < 0.9 * before
    assert model.processors[0].counts.item() > 0  # the processor fitted its statistics


@pytest.mark.parametrize("steps", [1, 20])
def test_sampler_is_deterministic_for_a_seed(steps: int) -> None:
    model = tiny().eval()
    fit_processors(model)
    latent = torch.randn(2, LATENT, 5, generator=torch.Generator().manual_seed(0))
    a = model.sample(latent, steps, torch.Generator().manual_seed(7))
    b = model.sample(latent, steps, torch.Generator().manual_seed(7))
    c = model.sample(latent, steps, torch.Generator().manual_seed(8))
    assert a.shape == (2, 1, 5 * HOP) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not a.is_inference()  # sampled under inference_mode, returned as an ordinary tensor
    # batched items equal items sampled alone only in distribution; the batch is one call
    assert model.sample(latent[:1], steps, torch.Generator().manual_seed(7)).shape == (
        1,
        1,
        5 * HOP,
    )


def test_checkpoint_round_trip_gives_identical_samples(tmp_path) -> None:
    model = tiny([{"use": False}, {"use": True, "n_bands": 4, "power_std": 0.4}]).eval()
    fit_processors(model)
    path = save_diffusion(model, tmp_path / "mbd.ckpt")
    loaded = load_diffusion(path)
    assert loaded.config == model.config
    latent = torch.randn(1, LATENT, 4)
    a = model.sample(latent, 4, torch.Generator().manual_seed(1))
    b = loaded.sample(latent, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def audiocraft_cfg(band: int, power_std: float, use: bool) -> object:
    """A band's training config as AudioCraft's solver holds it (an OmegaConf DictConfig)."""
    return OmegaConf.create(
        {
            "device": "cpu",
            "solver": "diffusion",
            "sample_rate": RATE,
            "channels": 1,
            "n_q": 4,
            "compression_model_checkpoint": "//pretrained/facebook/encodec_32khz",
            "diffusion_unet": {
                **UNET,
                "max_channels": 10_000,
                "dropout": 0.0,
                "res_blocks": 1,
                "bilstm": False,
                "codec_dim": LATENT,
                "transformer": False,
                "cross_attention": False,
            },
            "schedule": {
                **SCHEDULE,
                "repartition": "power",
                "variable_step_batch": True,
                "rescale": 1.0,
                "n_bands": None,
                "noise_scale": 1.0,
            },
            "processor": {
                "name": "multi_band_processor",
                "use": use,
                "n_bands": 4,
                "num_samples": 10_000,
                "power_std": power_std,
            },
            "filter": {"use": True, "n_bands": BANDS, "idx_band": band, "cutoffs": None},
            "resampling": {"use": False, "target_sr": 16000},
            "optim": {"ema": {"use": True, "device": "${device}", "decay": 0.99}},
        }
    )


def official_package(unets: list[dict], processors: list[dict]) -> dict:
    """A package in the layout of AudioCraft's released MBD files."""
    pkg: dict = {"sample_rate": RATE, "n_bands": BANDS}
    for band in range(BANDS):
        use = bool(processors[band])
        pkg[band] = {
            "cfg": audiocraft_cfg(band, 0.4 if band == 0 else 0.75, use),
            "model_state": unets[band],
            "processor_state": processors[band],
        }
    return pkg


def our_official_weights() -> tuple[list[dict], list[dict]]:
    model = tiny([{"use": False}, {"use": True, "n_bands": 4, "power_std": 0.75}])
    fit_processors(model)
    unets = [m.state_dict() for m in model.models]
    return unets, [p.state_dict() for p in model.processors]


def test_official_layout_loads_every_tensor(tmp_path) -> None:
    unets, processors = our_official_weights()
    assert set(unets[0]) == AUDIOCRAFT_UNET_KEYS
    assert processors[0] == {} and set(processors[1]) == AUDIOCRAFT_PROCESSOR_KEYS
    torch.save(official_package(unets, processors), tmp_path / "mbd_musicgen_32khz.th")
    model = load_diffusion(tmp_path, hop_length=HOP)  # the folder, as AudioCraft names it
    assert model.n_bands == BANDS and model.latent_dim == LATENT and model.n_q == 4
    for band in range(BANDS):
        for key, value in unets[band].items():
            assert torch.equal(model.models[band].state_dict()[key], value)
    assert torch.equal(model.processors[1].sum_x2, processors[1]["sum_x2"])
    assert (
        model.processors[1].power_std == 0.75
        and type(model.processors[0]).__name__ == "SampleProcessor"
    )


@pytest.mark.parametrize("damage", ["missing", "unused", "stray", "shape"])
def test_official_layout_names_bad_keys(tmp_path, damage: str) -> None:
    unets, processors = our_official_weights()
    pkg = official_package(unets, processors)
    if damage == "missing":
        del pkg[1]["model_state"]["embeddings.0.weight"]
    elif damage == "unused":
        pkg[0]["model_state"]["bilstm.linear.weight"] = torch.zeros(1)
    elif damage == "stray":
        pkg["extra"] = {"w": torch.zeros(2)}
    else:
        pkg[0]["model_state"]["conv_codec.weight"] = torch.zeros(3, 3, 1)
    torch.save(pkg, tmp_path / "mbd_comp_4.pt")
    expected = {
        "missing": "missing models.1.embeddings.0.weight",
        "unused": "unused models.0.bilstm.linear.weight",
        "stray": "extra.w",
        "shape": "conv_codec.weight",
    }[damage]
    with pytest.raises(UserError, match=expected.replace(".", r"\.")):
        load_diffusion(tmp_path / "mbd_comp_4.pt", hop_length=HOP)


def test_missing_or_ambiguous_checkpoints_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_diffusion(tmp_path / "nope.th")
    with pytest.raises(UserError, match="no mbd_"):
        load_diffusion(tmp_path)
    for name in ("mbd_comp_2.pt", "mbd_comp_4.pt", "mbd_musicgen_32khz.th"):  # the HF repo's
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(UserError, match="several MBD files"):
        load_diffusion(tmp_path)
    with pytest.raises(UserError, match="none fits"):
        load_diffusion(tmp_path, n_q=8, sample_rate=24000)
    # picked for the codec, then refused as damaged
    with pytest.raises(UserError, match=r"mbd_comp_4\.pt"):
        load_diffusion(tmp_path, n_q=4, sample_rate=24000)
    with pytest.raises(UserError, match=r"mbd_musicgen_32khz\.th"):
        load_diffusion(tmp_path, n_q=4, sample_rate=32000)


@pytest.mark.skipif(audiocraft_dir() is None, reason=SKIP_REASON)
def test_released_layout_samples_as_audiocraft(tmp_path) -> None:
    """AudioCraft's DiffusionUnet, MultiBandProcessor and NoiseSchedule (its own source) with
    random weights, saved in its release layout: our loaded model predicts the same noise and
    samples the same audio for the same random numbers (AudioCraft's generate loop)."""
    ac_unet, ac_schedule = load_modules()
    torch.manual_seed(0)
    cfgs = [OmegaConf.to_container(audiocraft_cfg(b, [0.4, 0.75][b], b == 1)) for b in range(BANDS)]
    models = [
        ac_unet.DiffusionUnet(chin=1, num_steps=1000, **cfg["diffusion_unet"]) for cfg in cfgs
    ]
    wav = torch.randn(4, 1, 2048)
    processors = []
    for band, cfg in enumerate(cfgs):
        options = {k: v for k, v in cfg["processor"].items() if k not in ("use", "name")}
        proc = (
            ac_schedule.MultiBandProcessor(sample_rate=RATE, **options)
            if cfg["processor"]["use"]
            else ac_schedule.SampleProcessor()
        )
        filt = split_bands(wav, RATE, BANDS)[band]
        proc.project_sample(filt)  # fits the statistics as in AudioCraft's training
        processors.append(proc)
    torch.save(
        official_package([m.state_dict() for m in models], [p.state_dict() for p in processors]),
        tmp_path / "mbd_musicgen_32khz.th",
    )
    ours = load_diffusion(tmp_path / "mbd_musicgen_32khz.th", hop_length=HOP)

    latent = torch.randn(2, LATENT, 6)
    x = torch.randn(2, 1, 6 * HOP)
    for band in range(BANDS):
        for step in (0, 500, 999):
            expected = models[band](x, step, condition=latent).sample
            torch.testing.assert_close(
                ours.models[band](x, step, latent), expected, atol=1e-6, rtol=1e-5
            )
        torch.testing.assert_close(
            ours.processors[band].return_sample(x),
            processors[band].return_sample(x),
            atol=1e-6,
            rtol=1e-5,
        )
    schedules = [
        ac_schedule.NoiseSchedule(**cfg["schedule"], sample_processor=p, device="cpu")
        for cfg, p in zip(cfgs, processors, strict=True)
    ]
    torch.testing.assert_close(ours.schedules[0].betas, schedules[0].betas, atol=0, rtol=0)
    for band, schedule in enumerate(schedules):  # the training objective's noisy input
        clean = split_bands(wav, RATE, BANDS)[band]
        processors[band].num_samples = 0  # statistics frozen on both sides (ours: eval mode)
        torch.manual_seed(9)
        noisy, noise, step = schedule.get_training_item(clean, tensor_step=True)
        projected = ours.processors[band].project_sample(clean)  # eval mode: no update
        expected = ours.schedules[band].noisy(projected, step, noise)
        torch.testing.assert_close(noisy, expected, atol=1e-6, rtol=1e-5)
    for steps, step_list in ((20, None), (4, [999, 749, 499, 249, 0])):
        torch.manual_seed(5)
        expected = torch.zeros(2, 1, 6 * HOP)
        for model, schedule in zip(models, schedules, strict=True):  # MultiBandDiffusion.generate
            expected += schedule.generate_subsampled(
                model, initial=torch.randn_like(expected), step_list=step_list, condition=latent
            )
        torch.manual_seed(5)
        torch.testing.assert_close(ours.sample(latent, steps), expected, atol=1e-5, rtol=1e-5)


def test_solver_checkpoints_load_their_ema_weights(tmp_path) -> None:
    model = tiny({"use": False})
    weights = {f"diffusion.{k}": v for k, v in model.state_dict().items()}
    weights |= {f"ema.{k}": v + 1 for k, v in model.state_dict().items()}
    weights["codec.decoder.w"] = torch.zeros(1)  # the solver's other modules are ignored
    state = {
        "hyper_parameters": {"diffusion": {**model.config, "n_q": None}, "n_q": 3},
        "state_dict": weights,
        "solver_config": {"name": "diffusion"},
    }
    torch.save(state, tmp_path / "last.ckpt")
    ema = load_diffusion(tmp_path / "last.ckpt")
    raw = load_diffusion(tmp_path / "last.ckpt", ema=False)
    key = "models.0.embedding.weight"
    assert torch.equal(ema.state_dict()[key], model.state_dict()[key] + 1)
    assert torch.equal(raw.state_dict()[key], model.state_dict()[key])
    assert ema.n_q == 3  # recorded by the solver beside the config
    torch.save({**state, "solver_config": {"name": "musicgen"}}, tmp_path / "lm.ckpt")
    with pytest.raises(UserError, match="solver=musicgen, not solver=diffusion"):
        load_diffusion(tmp_path / "lm.ckpt")


class CleanBand(torch.nn.Module):
    """An oracle U-Net of the x0 objective: returns the clean band whatever it is given."""

    def __init__(self, band: torch.Tensor) -> None:
        super().__init__()
        self.band = band

    def forward(self, x: torch.Tensor, step, condition: torch.Tensor) -> torch.Tensor:
        return self.band.expand_as(x)


def test_x0_objective_learns_the_clean_band_and_samples_through_its_noise() -> None:
    s = NoiseSchedule(**SCHEDULE)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 1, 300, generator=gen), torch.randn(2, 1, 300, generator=gen)
    for step in (0, 49, 500, 999):
        noisy = s.noisy(x0, torch.tensor([step, step]), noise)
        torch.testing.assert_close(s.noise_from_x0(noisy, step, x0), noise, atol=1e-3, rtol=0)
    model = MultiBandDiffusion(
        RATE, BANDS, LATENT, HOP, UNET, SCHEDULE, {"use": False}, objective="x0"
    ).eval()
    wav = torch.randn(2, 1, 5 * HOP, generator=gen) * 0.3
    latent = torch.randn(2, LATENT, 5, generator=gen)
    model.models = torch.nn.ModuleList(CleanBand(band) for band in model.split(wav))
    assert model.training_loss(wav, latent).item() == 0.0  # the target is the clean band
    # the chain of a perfect x0 predictor ends on the clean signal (up to alpha_bar at step 0)
    sample = model.sample(latent, 20, torch.Generator().manual_seed(1))
    torch.testing.assert_close(sample, wav, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="objective"):
        MultiBandDiffusion(RATE, BANDS, LATENT, HOP, UNET, SCHEDULE, {}, objective="v")


class Spy(torch.nn.Module):
    """A U-Net stand-in that records its inputs and returns their first channel."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, step, condition: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return x[:, :1]


def test_audio_condition_gives_each_unet_its_band_of_the_codec_decoding(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    wav, decoded = (
        torch.randn(2, 1, 5 * HOP, generator=gen),
        torch.randn(2, 1, 5 * HOP, generator=gen),
    )
    latent = torch.randn(2, LATENT, 5, generator=gen)
    model = MultiBandDiffusion(
        RATE, BANDS, LATENT, HOP, UNET, SCHEDULE, {"use": False}, audio_condition=True
    ).eval()
    # the real U-Nets read 2 channels (noisy band, codec band) and predict 1
    assert model.models[0].encoders[0].conv.in_channels == 2
    assert model.models[0](torch.randn(2, 2, 5 * HOP), 3, latent).shape == (2, 1, 5 * HOP)
    spies = [Spy() for _ in range(BANDS)]
    model.models = torch.nn.ModuleList(spies)
    model.training_loss(wav, latent, decoded=decoded[..., :-7])  # short: zero-padded
    model.sample(latent, 3, torch.Generator().manual_seed(1), decoded=decoded)
    padded = torch.nn.functional.pad(decoded[..., :-7], (0, 7))
    for spy, train_band, sample_band in zip(
        spies, model.split(padded), model.split(decoded), strict=True
    ):
        assert spy.inputs[0].shape == (2, 2, 5 * HOP)
        torch.testing.assert_close(spy.inputs[0][:, 1:], train_band)
        assert len(spy.inputs) == 1 + 3 and all(
            torch.equal(x[:, 1:], sample_band) for x in spy.inputs[1:]
        )
    with pytest.raises(ValueError, match="pass decoded"):
        model.sample(latent, 3)
    with pytest.raises(ValueError, match="decoded audio of shape"):
        model.training_loss(wav, latent, decoded=decoded[:1])


def test_audio_conditioned_checkpoint_round_trip_gives_identical_samples(tmp_path) -> None:
    torch.manual_seed(0)
    model = MultiBandDiffusion(
        RATE, BANDS, LATENT, HOP, UNET, SCHEDULE, {"use": False}, objective="x0",
        audio_condition=True,
    ).eval()  # fmt: skip
    loaded = load_diffusion(save_diffusion(model, tmp_path / "mbd.ckpt"))
    assert loaded.config == model.config and loaded.audio_condition
    latent, decoded = torch.randn(1, LATENT, 4), torch.randn(1, 1, 4 * HOP)
    a = model.sample(latent, 4, torch.Generator().manual_seed(1), decoded=decoded)
    b = loaded.sample(latent, 4, torch.Generator().manual_seed(1), decoded=decoded)
    assert torch.equal(a, b)


class Zero(torch.nn.Module):
    def forward(self, x: torch.Tensor, step, condition: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x[:, :1])


def test_x0_audio_condition_predicts_the_codec_error() -> None:
    """With x0, a U-Net that predicts no correction samples the codec's own decoding."""
    gen = torch.Generator().manual_seed(0)
    decoded, latent = torch.randn(2, 1, 5 * HOP, generator=gen) * 0.3, torch.randn(2, LATENT, 5)
    model = MultiBandDiffusion(
        RATE, BANDS, LATENT, HOP, UNET, SCHEDULE, {"use": False}, objective="x0",
        audio_condition=True,
    ).eval()  # fmt: skip
    model.models = torch.nn.ModuleList(Zero() for _ in range(BANDS))
    assert model.training_loss(decoded, latent, decoded=decoded).item() == 0.0
    sample = model.sample(latent, 20, torch.Generator().manual_seed(1), decoded=decoded)
    torch.testing.assert_close(sample, decoded, atol=2e-3, rtol=0)


def test_audio_condition_is_equalised_by_the_band_processor() -> None:
    """With processors, the codec's band is projected as the noisy band: an x0 U-Net predicting
    no correction has zero loss on the codec's own decoding and samples its processed round trip
    (the raw band would be added to an equalised prediction)."""
    model = MultiBandDiffusion(
        RATE, BANDS, LATENT, HOP, UNET, SCHEDULE, {"use": True, "n_bands": 4, "power_std": 0.75},
        objective="x0", audio_condition=True,
    )  # fmt: skip
    fit_processors(model)
    model.models = torch.nn.ModuleList(Zero() for _ in range(BANDS))
    gen = torch.Generator().manual_seed(0)
    decoded, latent = torch.randn(2, 1, 5 * HOP, generator=gen) * 0.3, torch.randn(2, LATENT, 5)
    counts = [p.counts.clone() for p in model.processors]
    model.train()  # the condition's projection leaves the statistics alone
    assert model.training_loss(decoded, latent, decoded=decoded).item() == 0.0
    assert all(torch.equal(p.counts, c + 2) for p, c in zip(model.processors, counts, strict=True))
    model.eval()
    sample = model.sample(latent, 20, torch.Generator().manual_seed(1), decoded=decoded)
    round_trip = sum(
        p.return_sample(p.project_sample(band))
        for p, band in zip(model.processors, model.split(decoded), strict=True)
    )
    torch.testing.assert_close(sample, round_trip, atol=1e-2, rtol=0)
