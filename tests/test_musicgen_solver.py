"""``solver=musicgen`` / ``musicgen_melody``: config composition, training, dropout, validation
samples, the Table 1 evaluation and the checkpoint round trip, on a tiny random codec and text
encoder saved in their real on-disk layouts."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader
from transformers import BertConfig, BertModel, BertTokenizerFast

from musicgen.compression import CodecConfig, CompressionModel
from musicgen.conditioners.chroma_cache import write_cache
from musicgen.errors import UserError
from musicgen.metrics.chroma_cosine import chroma_cosine_similarity
from musicgen.metrics.clap import ClapScore
from musicgen.metrics.fad import embedding_stats, frechet_distance
from musicgen.metrics.kl import KLDivergence
from musicgen.musicgen_model import MusicGen
from solvers.musicgen import PAPER_ROWS, MusicGenSolver, chroma_image
from solvers.runtime import register_resolvers
from tests.fixtures.repeat import Repeat

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
WORDS = ["toy", "piece", "number", "calm", "chorale", "in", "a", "minor", "for", "strings"]
TINY_LM = {"dim": 32, "num_heads": 2, "num_layers": 1, "ffn_dim": 64}
MELODY = {"stemmer": "oracle", "winlen": 2048, "hop": 512}


def write_tiny_codec(out: Path) -> Path:
    """A 16 kHz codec, hop 128 (125 frames/s), 4 codebooks of 64 (random, no k-means)."""
    torch.manual_seed(0)
    config = CodecConfig(
        sample_rate=RATE,
        ratios=(8, 4, 4),
        n_filters=4,
        dimension=16,
        n_q=4,
        bins=64,
        lstm=0,
        kmeans_init=False,
    )
    return CompressionModel(config).save(out)


def write_tiny_text_encoder(out: Path) -> Path:
    """A one-layer BERT of width 16 with a word-level vocabulary, as ``save_pretrained`` writes it."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(out)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("musicgen_assets")
    return {
        "codec": write_tiny_codec(root / "codec"),
        "text": write_tiny_text_encoder(root / "text"),
    }


def make_solver(assets: dict, melody: bool | dict = True, **kwargs) -> MusicGenSolver:
    """A tiny solver; ``melody``: True for :data:`MELODY`, a dict for other melody settings."""
    torch.manual_seed(0)
    options = dict(
        lm=TINY_LM,
        codec_checkpoint=str(assets["codec"]),
        text={"local_dir": str(assets["text"])},
        melody=(melody if isinstance(melody, dict) else MELODY) if melody else None,
        data_fields=["audio", "caption", "stems"],
        segment_seconds=1.0,
        generation={"top_k": 20},
        samples={"count": 2, "duration": 0.5},
        evaluation={"fad_embedder": "crepe", "fad_options": {"capacity": "tiny"}},
    )
    return MusicGenSolver(**{**options, **kwargs})


def tone_batch(seconds: float = 1.0) -> dict:
    """Two items: a melody of sine notes in the 'other' stem (C then G, or E then A) over a
    steady bass stem; the mix is their sum."""
    t = torch.arange(int(seconds * RATE)) / RATE
    half = t < seconds / 2

    def tone(hz_a: float, hz_b: float) -> torch.Tensor:
        return 0.3 * torch.sin(2 * torch.pi * torch.where(half, hz_a, hz_b) * t)

    melodies = [tone(261.63, 392.0), tone(329.63, 440.0)]
    bass = 0.2 * torch.sin(2 * torch.pi * 55.0 * t)
    stems = torch.zeros(2, 4, 1, t.shape[0])
    for i, melody in enumerate(melodies):
        stems[i, 1, 0], stems[i, 2, 0] = bass, melody  # bass, other (data.shards.STEMS order)
    return {
        "audio": stems.sum(1),
        "stems": stems,
        "caption": ["calm chorale in a minor", "toy piece for strings"],
        "key": ["a", "b"],
    }


def trainer(**kwargs) -> L.Trainer:
    options = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    return L.Trainer(**{**options, **kwargs})


def eval_ce(solver: MusicGenSolver, batch: dict) -> float:
    solver.eval()
    with torch.no_grad():
        loss = solver.loss(batch).loss.item()
    solver.train()
    return loss


def test_composed_melody_preset_builds_the_solver(assets: dict, toy_dataset: Path) -> None:
    register_resolvers()
    overrides = [
        "experiment=musicgen_melody_tiny",
        f"dataset.root={toy_dataset}",
        f"solver.module.codec_checkpoint={assets['codec']}",
        f"solver.module.text.local_dir={assets['text']}",
        "solver.data.sample_rate=16000",
        "solver.module.lm.dim=32",
        "solver.module.lm.num_heads=2",
        "solver.module.lm.num_layers=1",
        "solver.module.lm.ffn_dim=64",
    ]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.solver.name == "musicgen_melody" and "stems" in cfg.solver.data.fields
    assert cfg.trainer.max_steps == 450 and cfg.loader.batch_size == 8  # the preset wins
    assert cfg.solver.data.segment_seconds == cfg.solver.data.eval_segment_seconds == 2.0
    solver = instantiate(cfg.solver.module, _convert_="all")
    assert isinstance(solver.model, MusicGen) and solver.model.has_melody
    assert solver.model.lm.config.card == 64 and solver.model.lm.config.n_q == 2
    assert solver.hparams["codec"]["bins"] == 64
    # 2 s segments at 16 kHz, step-aligned: one melody frame per codec frame (hop 128)
    assert solver.hparams["melody"]["duration_frames"] == 32000 // 128
    assert solver.model.conditions.melody.frame_hop == 128
    assert (solver.cfg_dropout, solver.melody_dropout) == (0.1, 0.19)
    optim = solver.configure_optimizers()["optimizer"]
    assert isinstance(optim, torch.optim.AdamW)
    assert optim.defaults["betas"] == (0.9, 0.95) and optim.defaults["weight_decay"] == 0.1
    trainable = {id(p) for p in solver.trainable_parameters()}
    assert not any(id(p) in trainable for p in solver.model.codec.parameters())
    assert {name.replace("/", ".") for name, _ in solver.ema.named_buffers()} == {
        name for name, p in solver.model.named_parameters() if p.requires_grad
    }


def test_text_preset_composes_with_the_paper_defaults() -> None:
    register_resolvers()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["solver=musicgen", "experiment=musicgen_medium"])
    module = cfg.solver.module
    assert (module.lm.dim, module.lm.num_layers, module.lm.num_heads) == (1536, 48, 24)
    assert module.generation.cfg_coef == 3.0 and module.generation.top_k == 250
    assert cfg.solver.data.segment_seconds == 30.0 and module.cfg_dropout == 0.3
    assert module.optim.lr == 1e-4 and module.optim.max_norm == 1.0 and module.melody is None


def test_missing_codec_checkpoint_is_a_user_error(toy_dataset: Path, tmp_path: Path) -> None:
    register_resolvers()
    overrides = [
        "experiment=musicgen_tiny",
        f"dataset.root={toy_dataset}",
        f"paths.runs_dir={tmp_path}",
    ]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with pytest.raises(Exception) as info:  # hydra wraps what the target raises
        instantiate(cfg.solver.module, _convert_="all")
    error = info.value if isinstance(info.value, UserError) else info.value.__cause__
    assert isinstance(error, UserError)
    message = str(error)
    assert (
        "\n" not in message and "demo-compression/checkpoints/last.ckpt does not exist" in message
    )
    assert "experiment=compression_tiny" in message
    with pytest.raises(UserError, match="codec_checkpoint is not set"):
        MusicGenSolver(lm=TINY_LM)


def test_oracle_stemmer_needs_the_stems_field(assets: dict) -> None:
    with pytest.raises(UserError, match="add stems to solver.data.fields"):
        make_solver(assets, data_fields=["audio", "caption"])
    with pytest.raises(UserError, match="probability"):
        make_solver(assets, cfg_dropout=1.5)


@pytest.mark.parametrize("step_aligned", [False, True])
def test_the_melody_prefix_reaches_the_lm(assets: dict, step_aligned: bool) -> None:
    solver = make_solver(assets, melody={**MELODY, "step_aligned": step_aligned})
    model, batch = solver.model, tone_batch()
    hop = model.codec.config.hop_length
    # 1 s segments: chroma frames (hop 512), or one frame per codec frame
    expected = RATE // hop if step_aligned else RATE // MELODY["hop"] + 1
    assert solver.hparams["melody"]["duration_frames"] == expected
    codes = model.tokens(batch["audio"])
    swapped = batch["stems"].flip(0)  # each item gets the other item's melody

    def logits(stems: torch.Tensor, drop: bool) -> torch.Tensor:
        prefix, mask = model.conditions(
            batch["caption"],
            wav=batch["audio"],
            stems=stems,
            drop_melody=torch.full((2,), drop),
        )
        return model.lm(codes, prefix, mask)

    assert not torch.allclose(logits(batch["stems"], False), logits(swapped, False))
    torch.testing.assert_close(logits(batch["stems"], True), logits(swapped, True))
    # the metric compares chroma at the chroma hop, whatever the prefix's frame rate
    scores = solver.chroma_scores(batch, {"melody": batch["stems"][:, 2], "swapped": swapped[:, 2]})
    assert scores["melody"] == pytest.approx(1.0) and scores["swapped"] < 0.5


def test_cfg_and_melody_dropout(assets: dict) -> None:
    solver = make_solver(assets)
    torch.manual_seed(1)
    drops = [solver.dropout_masks(1000) for _ in range(4)]
    drop_text = torch.cat([d[0] for d in drops]).float()
    drop_melody = torch.cat([d[1] for d in drops]).float()
    assert abs(drop_text.mean().item() - 0.3) < 0.03  # all conditions together
    # AudioCraft's combination: one uniform decides both, the melody goes below max(0.3, 0.5)
    assert abs(drop_melody.mean().item() - 0.5) < 0.03
    assert abs(drop_melody[drop_text == 0].mean().item() - 0.2 / 0.7) < 0.03
    assert bool((drop_melody >= drop_text).all())

    batch = tone_batch()
    conditions = solver.model.conditions
    kept = conditions(batch["caption"], wav=batch["audio"], stems=batch["stems"])
    dropped = conditions(
        batch["caption"],
        wav=batch["audio"],
        stems=batch["stems"],
        drop_text=torch.tensor([True, False]),
        drop_melody=torch.tensor([True, True]),
    )
    frames = solver.hparams["melody"]["duration_frames"]
    assert kept[0].shape == dropped[0].shape and kept[0].shape[1] > frames  # same P: text + melody
    assert not dropped[1][0].any() and dropped[1][1, :-frames].any()
    assert not dropped[1][1, -frames:].any() and (dropped[0][0] == 0).all()
    # Generation without a melody uses the dropped melody with the same number of frames.
    null = solver.model.condition(batch["caption"], RATE, drop=True)
    assert null[0].shape == kept[0].shape and not null[1].any()


def test_training_steps_reduce_cross_entropy_on_a_fixed_batch(assets: dict) -> None:
    batch = tone_batch()
    solver = make_solver(assets, optim={"lr": 3e-3}, cfg_dropout=0.0, melody_dropout=0.0)
    before = eval_ce(solver, batch)
    trainer(max_steps=40).fit(solver, DataLoader(Repeat(batch), batch_size=None))
    after = eval_ce(solver, batch)
    assert after < 0.7 * before, (before, after)
    metrics = solver.trainer.callback_metrics
    assert {"train/ce", "train/ce_q0", "train/ce_q3", "train/ppl_q0"} <= set(metrics)
    assert metrics["train/ppl_q0"].item() == pytest.approx(
        metrics["train/ce_q0"].exp().item(), rel=1e-5
    )
    ema = dict(solver.ema.named_buffers())
    assert not torch.equal(ema["lm/emb"], solver.model.lm.emb)  # an average, not a copy
    with solver.evaluated() as model:
        assert torch.equal(model.lm.emb, ema["lm/emb"])
    assert not torch.equal(solver.model.lm.emb, ema["lm/emb"])  # own weights back


def test_gradients_are_clipped_at_max_norm(assets: dict) -> None:
    solver = make_solver(assets, optim={"max_norm": 1e-3})
    loss = solver.loss(tone_batch()).loss
    loss.backward()
    optimizer = torch.optim.SGD(solver.trainable_parameters(), lr=0.0)
    solver.trainer = trainer()  # clip_gradients goes through the trainer's precision plugin
    solver.configure_gradient_clipping(optimizer)
    norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in solver.trainable_parameters() if p.grad is not None])
    )
    assert norm.item() == pytest.approx(1e-3, rel=1e-3)


def test_validation_logs_ce_samples_and_chroma_cosine(assets: dict) -> None:
    solver = make_solver(assets)
    run = trainer(limit_val_batches=1)
    run.validate(solver, DataLoader([tone_batch()], batch_size=None), verbose=False)
    metrics = run.callback_metrics
    assert {"valid/ce", "valid/ce_q0", "valid/ppl_q3"} <= set(metrics)
    for name in ("melody", "no_melody"):
        assert 0.0 <= metrics[f"valid/chroma_cos_{name}"].item() <= 1.0


def test_chroma_cosine_is_one_for_the_melody_itself(assets: dict) -> None:
    solver = make_solver(assets)
    batch = tone_batch()
    melody = batch["stems"][:, 2]  # what the oracle stemmer keeps: 'other' (+ silent vocals)
    scores = solver.chroma_scores(batch, {"melody": melody, "mix": batch["audio"]})
    assert scores["melody"] == pytest.approx(1.0)
    reference = solver.model.melody_chroma(batch["audio"], batch["stems"])
    assert scores["mix"] == pytest.approx(
        chroma_cosine_similarity(reference, solver.model.chroma(batch["audio"]))
    )
    image = chroma_image(reference[0], reference[0])
    assert image.shape == (25 * 8, reference.shape[1] * 8) and image.dtype == np.uint8


def test_evaluation_table_matches_an_independent_fad(assets: dict) -> None:
    solver = make_solver(assets)
    batch = tone_batch()
    trainer().test(solver, DataLoader([batch], batch_size=None), verbose=False)
    (table,) = solver.evaluation_tables()
    ours = table.rows[:2]
    assert [row["system"] for row in ours] == [
        "ours, text + melody (EMA weights)",
        "ours, text (EMA weights)",
    ]
    assert table.rows[2:] == PAPER_ROWS
    assert all(row["n"] == "2 generated / 2 reference" for row in ours)
    assert all(row["FAD model"].startswith("crepe-tiny") for row in ours)
    assert all(row["KL"] is None and row["CLAP_scr"] is None for row in ours)
    assert "not computed" in table.notes and "Table 1" in table.notes
    assert all(0.0 <= row["Cos"] <= 1.0 for row in ours)

    # The same clips, embedded and fitted independently.
    with solver.evaluated():
        generated = solver.generate(batch, 1.0, with_melody=True)
    embed = solver.embedder.embed
    ref = torch.cat([embed(w, RATE) for w in batch["audio"]])
    gen = torch.cat([embed(w, RATE) for w in generated])
    a, b = embedding_stats(gen), embedding_stats(ref)
    expected = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert ours[0]["FAD"] == pytest.approx(expected, rel=1e-6)


def stand_in_classifier(wav: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` -> ``(B, 3)`` logits from loudness statistics (a stand-in for PaSST)."""
    return 20 * torch.stack([wav.std(-1), wav.abs().mean(-1), wav.mean(-1)], dim=-1)


class StandInClap:
    """Audio -> low spectrum, text -> its length and vowel count (a stand-in for LAION CLAP)."""

    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(wav, n=6).abs()[:, :2]

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[len(t), sum(c in "aeiou" for c in t)] for t in texts]).float()


def test_evaluation_table_fills_kl_and_clap_from_the_metrics(
    assets: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import solvers.musicgen as module

    monkeypatch.setattr(module, "build_kl", lambda *a: KLDivergence(stand_in_classifier))
    monkeypatch.setattr(module, "build_clap", lambda *a: ClapScore(StandInClap(), "stand-in"))
    solver, batch = make_solver(assets), tone_batch()
    trainer().test(solver, DataLoader([batch], batch_size=None), verbose=False)
    (table,) = solver.evaluation_tables()
    with solver.evaluated():
        generated = {
            "text + melody": solver.generate(batch, 1.0, with_melody=True),
            "text": solver.generate(batch, 1.0, with_melody=False),
        }
    for row, (label, wavs) in zip(table.rows[:2], generated.items(), strict=True):
        assert row["system"] == f"ours, {label} (EMA weights)"
        kl, clap = KLDivergence(stand_in_classifier), ClapScore(StandInClap())
        kl.update(wavs, batch["audio"], RATE)
        clap.update(wavs, RATE, batch["caption"])
        assert row["KL"] == pytest.approx(kl.compute().value, rel=1e-6)
        assert row["CLAP_scr"] == pytest.approx(clap.compute().value, rel=1e-6)
    assert "CLAP: stand-in." in table.notes


def test_published_rows_are_the_papers_and_the_model_cards_with_sources() -> None:
    systems = [row["system"] for row in PAPER_ROWS]
    for size, label in (("300M", "text"), ("1.5B", "text"), ("3.3B", "text")):
        assert f"MusicGen {size}, {label} (paper)" in systems
    assert "MusicGen 1.5B, text + random melody (paper)" in systems
    card = {row["system"].split()[0]: row for row in PAPER_ROWS if "model card" in row["source"]}
    assert [card[m]["FAD"] for m in card] == [4.88, 5.14, 5.48, 4.93]
    assert card["facebook/musicgen-melody"]["Cos"] == 0.44
    for row in PAPER_ROWS:
        assert row["source"] and row["FAD model"] == "VGGish"
        assert set(row) <= {"system", "FAD", "FAD model", "KL", "CLAP_scr", "Cos", "source"}


def test_checkpoint_round_trip_gives_identical_generations(assets: dict, tmp_path: Path) -> None:
    batch = tone_batch()
    solver = make_solver(assets, optim={"lr": 3e-3})
    run = trainer(max_steps=3)
    run.fit(solver, DataLoader(Repeat(batch), batch_size=None))
    path = tmp_path / "last.ckpt"
    run.save_checkpoint(path)

    model = MusicGen.from_checkpoint(path)
    raw = MusicGen.from_checkpoint(path, ema=False)
    assert torch.equal(raw.lm.emb, solver.model.lm.emb)
    solver.eval()
    with solver.evaluated() as expected:
        assert torch.equal(model.lm.emb, expected.lm.emb)
        for melody in (batch["audio"], None):
            kwargs = dict(melody_stems=batch["stems"] if melody is not None else None, top_k=20)
            ours = model.generate(
                batch["caption"], melody, RATE, 0.5,
                generator=torch.Generator().manual_seed(3), **kwargs,
            )  # fmt: skip
            theirs = expected.generate(
                batch["caption"], melody, RATE, 0.5,
                generator=torch.Generator().manual_seed(3), **kwargs,
            )  # fmt: skip
            assert ours.shape == (2, 1, RATE // 2) and torch.equal(ours, theirs)
    with pytest.raises(UserError, match="does not exist"):
        MusicGen.from_checkpoint(tmp_path / "missing.ckpt")


def test_text_only_model_refuses_a_melody(assets: dict) -> None:
    solver = make_solver(assets, melody=False, data_fields=["audio", "caption"])
    assert not solver.model.has_melody
    wav = solver.model.generate(["calm chorale"], duration=0.25, top_k=5)
    assert wav.shape == (1, 1, RATE // 4)
    with pytest.raises(UserError, match="no melody conditioning"):
        solver.model.generate(["calm"], torch.zeros(1, RATE), RATE, 0.25)


def test_mixed_precision_training_and_generation(assets: dict) -> None:
    """bf16 autocast (the GPU trainer's precision) on CPU: tokens and audio stay float32."""
    batch = tone_batch()
    solver = make_solver(assets)
    run = trainer(max_steps=2, precision="bf16-mixed", limit_val_batches=1)
    run.fit(solver, DataLoader(Repeat(batch), batch_size=None))
    run.validate(solver, DataLoader([batch], batch_size=None), verbose=False)
    assert torch.isfinite(run.callback_metrics["valid/ce"])
    assert 0.0 <= run.callback_metrics["valid/chroma_cos_melody"].item() <= 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(solver.model.tokens(batch["audio"]), solver.model.tokens(batch["audio"]))
        wav = solver.model.generate(batch["caption"], duration=0.25, top_k=5)
    assert wav.dtype == torch.float32 and wav.shape == (2, 1, RATE // 4)


@pytest.mark.parametrize("step_aligned", [False, True])
def test_a_chroma_cache_gives_the_loss_of_stemming_each_step(
    assets: dict, tmp_path: Path, step_aligned: bool
) -> None:
    melody = {**MELODY, "step_aligned": step_aligned}
    direct = make_solver(assets, melody=melody)
    batch = tone_batch(1.0) | {"start": torch.zeros(2)}
    tracks = zip(batch["key"], batch["audio"], batch["stems"], strict=True)
    write_cache(tracks, direct.model.conditions.melody, tmp_path)
    cached = make_solver(assets, melody=melody, chroma_cache=str(tmp_path))
    cached.setup("test")  # evaluation stems its inputs: the cache is for training only
    assert cached.chroma_cache is None
    cached.setup("fit")
    cached.model.load_state_dict(direct.model.state_dict())
    drop = (torch.zeros(2, dtype=torch.bool), torch.tensor([False, True]))
    assert "chroma" in cached._melody_inputs(batch)
    torch.testing.assert_close(cached.loss(batch, drop).loss, direct.loss(batch, drop).loss)
    with pytest.raises(UserError, match="for melody models"):
        make_solver(assets, melody=False, chroma_cache=str(tmp_path))
