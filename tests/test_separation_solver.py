"""``solver=separation``: configs, a training step, evaluation records and tables, the checkpoint
layout ``load_separator`` reads, and the ``separation`` melody stemmer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from musicgen.checkpoint_io import SOLVER_KEY
from musicgen.conditioners.chroma import ChromaExtractor
from musicgen.conditioners.melody import MelodyConditioner
from musicgen.conditioners.stemmers import SeparationStemmer, build_stemmer
from musicgen.errors import UserError
from musicgen.metrics.separation import track_sdr
from musicgen.separation.apply import separate
from musicgen.separation.checkpoint import load_separator
from solvers.separation import SeparationSolver, model_targets, scored_estimates

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

CONF = Path(__file__).resolve().parents[1] / "conf"
RATE = 8000
TINY = {
    "kind": "spleeter",
    "stems": ["drums", "bass", "other", "vocals"],
    "channels": [4, 4, 8, 8, 8, 8],
    "n_fft": 256,
    "hop": 64,
    "freq_bins": 128,
    "patch_frames": 64,
    "sample_rate": RATE,
    "audio_channels": 1,
}


def tone_stems(seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """``(2, 4, 1, T)`` stems in data.shards.STEMS order: noise bursts, a low tone, a mid tone,
    a high vibrato tone."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * RATE)) / RATE
    items = []
    for shift in (1.0, 1.25):
        drums = 0.2 * torch.randn(t.shape, generator=gen) * (torch.sin(2 * torch.pi * 3 * t) > 0.6)
        bass = 0.3 * torch.sin(2 * torch.pi * 70 * shift * t)
        other = 0.2 * torch.sin(2 * torch.pi * 440 * shift * t)
        vocals = 0.2 * torch.sin(
            2 * torch.pi * 900 * shift * t + 4 * torch.sin(2 * torch.pi * 5 * t)
        )
        items.append(torch.stack([drums, bass, other, vocals])[:, None])
    return torch.stack(items)


def make_solver(**kwargs) -> SeparationSolver:
    torch.manual_seed(0)
    return SeparationSolver(
        **{"separator": TINY, "optim": {"lr": 3e-3}, "joint_sdr": False, **kwargs}
    )


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    "separator, kind, stems, rate",
    [
        ("htdemucs", "htdemucs", ["drums", "bass", "other", "vocals"], 44100),
        *(
            pytest.param(*case, marks=pytest.mark.slow)
            for case in (
                ("spleeter_4stems", "spleeter", ["vocals", "drums", "bass", "other"], 44100),
                ("spleeter_2stems", "spleeter", ["vocals", "accompaniment"], 44100),
                (
                    "spleeter_5stems",
                    "spleeter",
                    ["vocals", "piano", "drums", "bass", "other"],
                    44100,
                ),
                ("spleeter_tiny", "spleeter", ["drums", "bass", "other", "vocals"], 16000),
            )
        ),
    ],
)
def test_separator_group_composes(separator: str, kind: str, stems: list, rate: int) -> None:
    cfg = compose_train("solver=separation", f"solver/separator={separator}")
    solver = OmegaConf.to_container(cfg.solver, resolve=True)
    model = solver["module"]["separator"]
    assert model["kind"] == kind and model.get("stems", model.get("sources")) == stems
    assert solver["data"]["sample_rate"] == rate and solver["data"]["fields"] == ["audio", "stems"]
    lr = solver["module"]["optim"]["lr"]
    assert lr == (3e-4 if kind == "htdemucs" else 1e-3 if separator == "spleeter_tiny" else 1e-4)
    assert (solver["module"]["augment"] is not None) == (kind == "htdemucs")


def test_default_is_spleeter_4stems_and_tiny_experiment() -> None:
    assert compose_train("solver=separation").solver.module.separator.stems[0] == "vocals"
    tiny = compose_train("experiment=separation_tiny")
    assert tiny.solver.module.separator.channels[0] == 8 and tiny.solver.module.joint_sdr is False


def test_targets_for_each_model_layout() -> None:
    stems = tone_stems(0.1)
    two = model_targets(stems, ("vocals", "accompaniment"))
    torch.testing.assert_close(two[:, 1], stems[:, :3].sum(1))
    torch.testing.assert_close(model_targets(stems, ("vocals", "drums"))[:, 1], stems[:, 0])
    with pytest.raises(UserError, match="piano"):
        model_targets(stems, ("vocals", "piano"))
    five = torch.arange(5.0)[:, None, None].expand(5, 1, 3)  # vocals piano drums bass other
    scored = scored_estimates(five, ("vocals", "piano", "drums", "bass", "other"))
    assert scored[:, 0, 0].tolist() == [0.0, 2.0, 3.0, 5.0]  # other + piano


def test_training_steps_lower_the_loss_on_a_fixed_batch() -> None:
    solver = make_solver()
    stems = tone_stems(0.5)
    batch = {"audio": stems.sum(1), "stems": stems}
    optimizer = solver.configure_optimizers()
    solver.log = lambda *a, **k: None
    losses = []
    for _ in range(8):
        loss = solver.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_demucs_augmentation_keeps_mix_equal_to_stems_and_checks_the_group() -> None:
    solver = make_solver(augment={"shift_seconds": 0.1, "remix_group_size": 2})
    batch = {"audio": tone_stems().sum(1), "stems": tone_stems()}
    mix, stems = solver._augmented(batch)
    assert stems.shape[-1] == batch["stems"].shape[-1] - round(0.1 * RATE)
    torch.testing.assert_close(mix, stems.sum(1))
    again = solver._augmented(batch)[1]
    torch.testing.assert_close(stems, again)  # same step and rank, same draws
    bad = make_solver(augment={"remix_group_size": 4})
    with pytest.raises(UserError, match="multiple"):
        bad._augmented(batch)


@pytest.mark.slow
def test_track_record_scores_model_and_mixture() -> None:
    solver = make_solver().eval()
    stems = tone_stems(1.5)[0]
    record = solver.track_record("k", stems.sum(0), stems)
    estimates = separate(solver.separator, stems.sum(0)[None], RATE)[0].double().numpy()
    refs = stems.double().numpy()
    np.testing.assert_allclose(record["sdr"], track_sdr(refs, estimates, RATE, joint=False))
    mix = np.broadcast_to(stems.sum(0).double().numpy(), refs.shape)
    np.testing.assert_allclose(record["mix_sdr"], track_sdr(refs, mix, RATE, joint=False))
    assert len(record["usdr"]) == 4 and record["seconds"] == pytest.approx(1.5)


def test_finish_reduces_as_musdb_and_tables_cite_the_papers() -> None:
    solver = make_solver(dataset_name="musdb")
    solver.log = lambda *a, **k: None
    solver._tracks["test"] = [
        {"key": k, "sdr": s, "usdr": u, "mix_sdr": m, "mix_usdr": m, "seconds": 1.0}
        for k, s, u, m in (
            ("b", [1.0, 2.0, 3.0, np.nan], [1.0, 1.0, 1.0, 1.0], [0.0] * 4),
            ("a", [3.0, 4.0, 5.0, 7.0], [3.0, 3.0, 3.0, 3.0], [-1.0] * 4),
            ("c", [8.0, 6.0, 4.0, 9.0], [5.0, 5.0, 5.0, 5.0], [-2.0] * 4),
        )
    ]
    scores = solver._finish("test")
    assert [t["key"] for t in solver.tracks["test"]] == ["a", "b", "c"]
    assert scores["sdr_drums"] == 3.0 and scores["sdr_vocals"] == 8.0  # medians, NaN ignored
    assert scores["usdr_bass"] == 3.0 and scores["mix_sdr"] == -1.0
    assert scores["sdr_gain"] == pytest.approx(scores["sdr"] + 1.0)
    solver.test_scores = scores
    table, tracks = solver.evaluation_tables()
    vocals = next(r for r in table.rows if r["stem"] == "vocals")
    assert vocals["ours SDR"] == 8.0 and vocals["Spleeter 4stems, masks (paper)"] == 6.55
    assert vocals["HTDemucs, MUSDB only (paper)"] == 7.93
    assert "arXiv 2211.08553" in table.notes and "joss.02154" in table.notes
    assert len(tracks.rows) == 3
    solver.hparams.dataset_name = "synth"
    synth = solver.evaluation_tables()[0]
    assert all(r["Spleeter 4stems, MWF (paper)"] is None for r in synth.rows)


def write_checkpoint(solver: SeparationSolver, path: Path) -> Path:
    """The layout train.py writes: state_dict, hyper_parameters and the solver config."""
    torch.save(
        {
            "state_dict": solver.state_dict(),
            "hyper_parameters": dict(solver.hparams),
            SOLVER_KEY: {"name": "separation"},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SeparationSolver, Path]:
    solver = make_solver()
    solver.separator.unets[0].mask.weight.data.normal_()  # not the initial weights
    path = write_checkpoint(solver, tmp_path_factory.mktemp("sep") / "last.ckpt")
    return solver.eval(), path


def test_checkpoint_loads_as_the_same_separator(trained: tuple) -> None:
    solver, path = trained
    model = load_separator(path)
    mix = tone_stems(1.0)[:, :, :].sum(1)
    torch.testing.assert_close(separate(model, mix, RATE), separate(solver.separator, mix, RATE))


def test_separation_stemmer_in_the_melody_path(trained: tuple) -> None:
    solver, path = trained
    stemmer = build_stemmer("separation", checkpoint=str(path))
    assert isinstance(stemmer, SeparationStemmer) and stemmer.tag.startswith("separation-last-")
    mix = tone_stems(1.0).sum(1)
    kept = separate(solver.separator, mix, RATE)[:, [2, 3]].sum(1)  # other + vocals
    torch.testing.assert_close(stemmer(mix, RATE), kept)
    melody = MelodyConditioner(8, RATE, stemmer)
    torch.testing.assert_close(melody.extract(mix), ChromaExtractor(RATE)(kept))
    assert not torch.allclose(stemmer(mix, RATE), mix, atol=1e-3)  # drums and bass are gone
    with pytest.raises(UserError, match="checkpoint"):
        build_stemmer("separation")
    with pytest.raises(UserError, match="piano"):
        build_stemmer("separation", checkpoint=str(path), keep=["piano"])


@pytest.mark.slow
def test_htdemucs_trains_with_the_demucs_recipe_and_is_scored() -> None:
    torch.manual_seed(0)
    separator = {
        "kind": "htdemucs",
        "sources": ["drums", "bass", "other", "vocals"],
        "samplerate": RATE,
        "audio_channels": 2,
        "segment": 1.0,
        "channels": 8,
        "depth": 2,
        "t_layers": 1,
        "nfft": 512,
    }
    augment = {"shift_seconds": 0.1, "remix_group_size": 2}
    solver = SeparationSolver(
        separator=separator, optim={"lr": 3e-3}, augment=augment, joint_sdr=False
    )
    solver.log = lambda *a, **k: None
    stems = tone_stems(1.1).expand(-1, -1, 2, -1).repeat(2, 1, 1, 1)  # 4 stereo items
    optimizer = solver.configure_optimizers()
    losses = []
    for _ in range(4):
        loss = solver.training_step({"audio": stems.sum(1), "stems": stems}, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    record = solver.eval().track_record("k", stems[0].sum(0), stems[0])
    assert len(record["sdr"]) == 4 and np.isfinite(record["usdr"]).all()


def test_evaluation_names_the_evaluated_dataset_not_the_training_one(tmp_path: Path) -> None:
    """The checkpoint keeps ``dataset_name`` as ``${dataset.name}``: evaluating a synth-trained
    model with dataset=musdb gives a MUSDB table (the published numbers beside ours)."""
    from solvers.restore import restore_solver_config
    from solvers.run_config import portable_solver_config
    from solvers.runtime import register_resolvers

    register_resolvers()
    trained = compose_train("experiment=separation_tiny")
    stored = portable_solver_config(trained)
    assert stored["module"]["dataset_name"] == "${dataset.name}"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=["solver=separation", "checkpoint=x", "dataset=musdb"])
    restore_solver_config(cfg, {SOLVER_KEY: stored}, tmp_path / "x", [])
    assert cfg.solver.module.dataset_name == "musdb"
    assert cfg.solver.module.separator.channels[0] == 8  # the trained model's config


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_validation_logs_the_mix_and_separated_stems(tmp_path: Path) -> None:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    from tests.test_media_logging import tensorboard_media

    stems = tone_stems(1.0)
    batch = {"audio": stems.sum(1), "stems": stems, "key": ["a", "b"]}
    solver = make_solver()
    logger = TensorBoardLogger(save_dir=tmp_path, name="logs", default_hp_metric=False)
    trainer = L.Trainer(
        logger=logger,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.validate(solver, DataLoader([batch], batch_size=None), verbose=False)
    media = tensorboard_media(tmp_path)
    names = ["mix", "drums", "bass", "other", "vocals"]
    assert sorted(media["audio"]) == sorted(f"valid/separation/a_{n}" for n in names)
    for (samples, rate), *_ in media["audio"].values():
        assert rate == RATE and samples.shape == (stems.shape[-1],)
    assert len(media["images"]) == 5


def test_chroma_cache_with_the_separation_stemmer(
    trained: tuple, toy_dataset: Path, tmp_path: Path
) -> None:
    """``python -m data.chroma_cache --stemmer separation --separator CKPT`` caches the chroma
    of the separator's vocals + other, in the stemmer's own folder."""
    from data.chroma_cache import main
    from musicgen.conditioners.chroma_cache import ChromaCache

    _, path = trained
    hop, winlen = 1024, 4096
    args = ["--shards", str(toy_dataset / "test-*.tar"), "--out", str(tmp_path)]
    args += ["--stemmer", "separation", "--separator", str(path), "--sample-rate", "16000"]
    assert main([*args, "--winlen", str(winlen), "--hop", str(hop)]) == 0
    stemmer = build_stemmer("separation", checkpoint=str(path))
    melody = MelodyConditioner(8, 16000, stemmer, winlen=winlen, hop=hop)
    cache = ChromaCache(tmp_path, melody)
    assert cache.dir.name.startswith("separation-last-") and list(cache.dir.glob("*.npy"))
    assert main(args[:6] + ["--stemmer", "separation"]) == 2  # no --separator: one error line
