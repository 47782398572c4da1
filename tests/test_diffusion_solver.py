"""``solver=diffusion``: training lowers the loss on a fixed batch, validation measures both
decoders, the test loop writes the codec-vs-diffusion table, bad settings are one error, and the
checkpoint rebuilds the solver (codec included) for ``evaluate.py``; on a tiny random codec saved
in its real on-disk layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from musicgen.compression import CodecConfig, CompressionModel
from musicgen.diffusion import load_diffusion
from musicgen.diffusion.bands import re_eq
from musicgen.diffusion.decoder import EQ_BANDS, decode_tokens
from musicgen.errors import UserError
from solvers.diffusion import PAPER_ROWS, DiffusionSolver, check_codec
from tests.fixtures.repeat import Repeat
from tests.fixtures.toy_shards import write_toy_dataset
from tests.test_media_logging import tensorboard_media
from tests.test_musicgen_solver import RATE, write_tiny_codec

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "n_bands": 2,
    "unet": {"hidden": 4, "depth": 2, "norm_groups": 2},
    "schedule": {"num_steps": 100},
    "processor": {"use": True, "n_bands": 2, "num_samples": 16},
}


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_codec(tmp_path_factory.mktemp("codec") / "codec")


def fixed_batch() -> dict:
    t = torch.arange(RATE // 2) / RATE
    tones = [0.3 * torch.sin(2 * torch.pi * f * t) for f in (220.0, 523.0)]
    return {"audio": torch.stack(tones).unsqueeze(1), "key": ["a", "b"]}


def solver(codec: Path, **kwargs) -> DiffusionSolver:
    options = dict(
        diffusion=TINY,
        codec_checkpoint=str(codec),
        n_q=2,
        optim={"lr": 3e-3},
        sampling={"steps": 2, "seed": 0},
        evaluation={"fad_embedder": "encodec", "fad_weights": str(codec)},
    )
    return DiffusionSolver(**{**options, **kwargs})


def trainer(max_steps: int = 1, val_batches: int | None = 0) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=val_batches,
    )


def fixed_loss(model: DiffusionSolver, batch: dict) -> float:
    with torch.no_grad():
        losses = [
            model.loss(model.diffusion, batch["audio"], torch.Generator().manual_seed(seed))
            for seed in range(8)
        ]
    return torch.stack(losses).mean().item()


def test_training_steps_lower_the_loss_on_a_fixed_batch(codec: Path) -> None:
    torch.manual_seed(0)
    model, batch = solver(codec), fixed_batch()
    before = fixed_loss(model, batch)
    trainer(40).fit(model, DataLoader(Repeat(batch), batch_size=None))
    after = fixed_loss(model, batch)
    assert after < 0.8 * before, (before, after)
    # The EMA follows the trained weights; the frozen codec did not move.
    assert not torch.equal(
        next(model.ema.parameters()), next(model.diffusion.parameters())
    ) and all(not p.requires_grad for p in model.codec.parameters())


def test_validation_and_test_measure_both_decoders(codec: Path) -> None:
    torch.manual_seed(0)
    model, batch = solver(codec, eval_codebooks=[1, 2]), fixed_batch()
    loader = DataLoader([batch, batch], batch_size=None)
    metrics = trainer(val_batches=None).validate(model, loader, verbose=False)[0]
    for decoder in ("codec", "diffusion", "diffusion_eq"):
        for n_q in (1, 2):
            assert metrics[f"valid/mel_{decoder}_q{n_q}"] > 0
            assert f"valid/sisnr_{decoder}_q{n_q}" in metrics
        assert metrics[f"valid/mel_{decoder}"] == metrics[f"valid/mel_{decoder}_q2"]
    # The codec decoder's numbers equal a direct computation on the batch.
    wav = batch["audio"]
    expected = model.mel_distance(
        model.codec.decode(model.codec.encode(wav, 1), wav.shape[-1]), wav
    )
    assert metrics["valid/mel_codec_q1"] == pytest.approx(expected.mean().item(), rel=1e-4)

    results = trainer().test(model, loader, verbose=False)[0]
    assert results["test/fad_diffusion_q2"] >= 0
    (table,) = model.evaluation_tables()
    ours = [row for row in table.rows if row["system"] not in [r["system"] for r in PAPER_ROWS]]
    assert [(row["system"].split()[0], row["codebooks"]) for row in ours] == [
        ("codec", 1), ("MBD", 1), ("MBD", 1), ("codec", 2), ("MBD", 2), ("MBD", 2),
    ]  # fmt: skip
    assert all(row["n"] == "4 decoded / 4 reference" for row in ours)
    assert ours[1]["mel_distance"] == pytest.approx(results["test/mel_diffusion_q1"])
    assert ours[2]["mel_distance"] == pytest.approx(results["test/mel_diffusion_eq_q1"])


def test_level_matched_decoding_is_decode_tokens_item_by_item(codec: Path) -> None:
    """The ``diffusion_eq`` output is what ``decode_tokens`` (AudioCraft's tokens_to_wav) gives
    each item on its own."""
    model, wav = solver(codec).eval(), fixed_batch()["audio"]
    decoded = model.decode_both(wav, 1, batch_idx=0)
    codes = model.codec.encode(wav, 1)
    for i in range(len(wav)):
        raw = decoded["diffusion"][i : i + 1]
        codec_wav = model.codec.decode(codes[i : i + 1], wav.shape[-1])
        expected = re_eq(raw, codec_wav, model.codec.sample_rate, EQ_BANDS)
        torch.testing.assert_close(decoded["diffusion_eq"][i : i + 1], expected)
    assert not torch.allclose(decoded["diffusion_eq"], decoded["diffusion"])


def test_audio_conditioned_decoder_trains_and_decodes_tokens_as_validation(codec: Path) -> None:
    """``audio_condition``: training reads the codec's decoding of the batch's tokens, and
    ``decode_tokens`` (the CLIs' and MusicGen's path) gives the validation's level-matched audio."""
    torch.manual_seed(0)
    diffusion = {**TINY, "audio_condition": True, "objective": "x0", "processor": {"use": False}}
    model, batch = solver(codec, diffusion=diffusion), fixed_batch()
    before = fixed_loss(model, batch)
    trainer(40).fit(model, DataLoader(Repeat(batch), batch_size=None))
    assert fixed_loss(model, batch) < 0.8 * before
    model.eval()
    wav = batch["audio"][:1, :, : 20 * model.hop]
    expected = model.decode_both(wav, 2, batch_idx=0)["diffusion_eq"]
    codes = model.codec.encode(wav, 2)
    got = decode_tokens(model.decoder, model.codec, codes, None, 2, model.generator(0))
    torch.testing.assert_close(got, expected)


def test_sampling_is_deterministic_for_the_seed(codec: Path) -> None:
    model = solver(codec)
    wav = fixed_batch()["audio"]
    first, second = model.decode_both(wav, 2, 0), model.decode_both(wav, 2, 0)
    assert torch.equal(first["diffusion"], second["diffusion"])
    assert first["diffusion"].shape == wav.shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_q": 5}, "must be in \\[1, 4\\]"),
        ({"eval_codebooks": [0]}, "must be in \\[1, 4\\]"),
        (
            {"diffusion": {**TINY, "hop_length": 100}},
            "diffusion.hop_length=100 but the codec has 128",
        ),
        ({"codec_checkpoint": None}, "codec_checkpoint is not set"),
        ({"diffusion": {**TINY, "n_bands": 3, "processor": [{}, {}]}}, "2 per-band configs"),
        ({"diffusion": {**TINY, "unet": {"width": 3}}}, "solver.module.diffusion does not"),
    ],
)
def test_bad_settings_are_one_user_error(codec: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        solver(codec, **kwargs)


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_train_then_evaluate_from_the_checkpoint_alone(
    toy_dataset: Path, tmp_path: Path, codec: Path
) -> None:
    """train.py with the tiny preset, then evaluate.py with only solver= and checkpoint= (the
    codec file gone: the checkpoint holds it) writes the table."""
    local = tmp_path / "weights" / "codec"
    shutil.copytree(codec, local)
    common = [
        f"dataset.root={toy_dataset}",
        "loader.batch_size=2",
        "loader.num_workers=0",
        "solver.data.eval_segment_seconds=1.0",
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"paths.weights_dir={tmp_path / 'weights'}",
    ]
    run(
        "train.py",
        "experiment=diffusion_tiny",
        *common,
        "solver.data.sample_rate=16000",
        f"solver.module.codec_checkpoint={local}",
        "solver.module.n_q=2",
        "solver.module.diffusion.unet.hidden=4",
        "solver.module.sampling.steps=2",
        "solver.module.evaluation.fad_embedder=encodec",
        f"solver.module.evaluation.fad_weights={codec}",
        "logger=csv",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "loader.train_batches_per_epoch=2",
    )
    (run_dir,) = (tmp_path / "runs").iterdir()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["solver_config"]["name"] == "diffusion"
    assert any(k.startswith("diffusion.") for k in state["state_dict"])
    assert state["hyper_parameters"]["diffusion"]["hop_length"] == 128
    shutil.rmtree(local)
    run("evaluate.py", "solver=diffusion", f"checkpoint={ckpt}", *common)
    (eval_dir,) = (tmp_path / "runs" / "eval").iterdir()
    table = json.loads((eval_dir / "diffusion.json").read_text())
    systems = [row["system"] for row in table["rows"]]
    assert systems[0] == "codec decoder (ours)" and systems[1].startswith("MBD decoder (ours")


def test_checkpoint_rebuilds_the_solver_without_the_codec_file(codec: Path, tmp_path: Path) -> None:
    """The saved hyperparameters rebuild the solver (the codec from its stored config, its
    weights from the checkpoint) and give the same samples; ``load_diffusion`` reads its EMA."""
    torch.manual_seed(0)
    model, batch = solver(codec), fixed_batch()
    fit = trainer(3)
    fit.fit(model, DataLoader(Repeat(batch), batch_size=None))
    path = tmp_path / "last.ckpt"
    fit.save_checkpoint(path, weights_only=True)
    state = torch.load(path, weights_only=True)
    hparams = {**state["hyper_parameters"], "codec_checkpoint": str(tmp_path / "gone")}
    rebuilt = DiffusionSolver(**hparams)
    rebuilt.load_state_dict(state["state_dict"])
    wav = batch["audio"]
    expected = model.decode_both(wav, 2, 0)
    for name, decoded in rebuilt.decode_both(wav, 2, 0).items():
        assert torch.equal(decoded, expected[name]), name
    loaded = load_diffusion(path)
    latent = model.tokens_and_latent(wav, 2)[1]
    sample = loaded.sample(latent, 2, torch.Generator().manual_seed(0), length=wav.shape[-1])
    again = model.ema.sample(latent, 2, torch.Generator().manual_seed(0), length=wav.shape[-1])
    assert torch.equal(sample, again)


@pytest.mark.slow
def test_two_processes_count_every_item_once(codec: Path, tmp_path: Path) -> None:
    """Under DDP (2 processes, 2 + 1 test items, batches of 1) the sums are reduced over ranks:
    the codec decoder's scores (deterministic) equal one process's, every row counts 3 items and
    a rank with fewer batches neither hangs nor skews the means."""
    data = write_toy_dataset(tmp_path / "uneven", {"train": 2, "valid": 1, "test": 3})
    overrides = [
        "experiment=diffusion_tiny",
        f"dataset.root={data}",
        "solver.data.sample_rate=16000",
        "solver.data.eval_segment_seconds=1.0",
        f"solver.module.codec_checkpoint={codec}",
        "solver.module.n_q=2",
        "solver.module.diffusion.unet.hidden=4",
        "solver.module.sampling.steps=2",
        "solver.module.evaluation.fad_embedder=encodec",
        f"solver.module.evaluation.fad_weights={codec}",
        "loader.eval_batch_size=1",
        "loader.num_workers=0",
    ]
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"{devices}.json"
        run("-m", "tests.fixtures.ddp_test_loop", str(out), str(devices), *overrides)
        results[devices] = json.loads(out.read_text())
    one, two = (results[n]["tables"]["diffusion"][:2] for n in (1, 2))
    assert [row["n"] for row in one + two] == ["3 decoded / 3 reference"] * 4
    assert two[0]["mel_distance"] == pytest.approx(one[0]["mel_distance"], rel=1e-6)
    assert two[0]["si_snr_db"] == pytest.approx(one[0]["si_snr_db"], rel=1e-6)
    assert all(v == v for v in results[2]["metrics"].values())  # no NaN


@pytest.mark.slow  # ~8 s on 2 loaded cores, mostly TensorBoard's event reader
def test_validation_logs_the_four_versions_of_each_clip(codec: Path, tmp_path: Path) -> None:
    """Original, codec-decoded and diffusion-decoded audio with spectrograms reach TensorBoard."""
    logger = TensorBoardLogger(save_dir=tmp_path, name="logs", default_hp_metric=False)
    run_trainer = L.Trainer(
        logger=logger,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    batch = fixed_batch()
    run_trainer.validate(solver(codec), DataLoader([batch], batch_size=None), verbose=False)
    media = tensorboard_media(tmp_path)
    names = {tag.rsplit("/", 1)[1].rsplit("_", 1)[0] for tag in media["audio"]}
    assert names == {"original", "codec", "diffusion", "diffusion_eq"} and len(media["audio"]) == 8
    for (samples, rate), *_ in media["audio"].values():
        assert rate == RATE and samples.shape == (batch["audio"].shape[-1],)
    assert len(media["images"]) == 8


def test_a_codec_that_normalises_its_input_is_refused() -> None:
    config = CodecConfig(sample_rate=RATE, ratios=(8, 4, 4), n_filters=4, dimension=16, n_q=2,
                         bins=64, lstm=0, kmeans_init=False, normalize=True, segment=1.0)  # fmt: skip
    with pytest.raises(UserError, match="normalises or segments its input"):
        check_codec(CompressionModel(config))
