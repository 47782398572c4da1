"""MusicGen LM fast paths: the KV cache with cross-attention equals the plain forward, split
cross-attention projections equal the packed ones, and the generation copies (oneDNN-packed
float32, bf16, int8) agree with the model (greedy tokens over 50 steps, logits) while leaving it
untouched."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch

from musicgen.lm import KVCache, LMConfig, MusicLM
from musicgen.lm.precision import PackedLinear
from musicgen.lm.transformer import CrossAttention

CARD, DIM = 64, 64
LINEARS = {  # the linear layers of each generation copy
    "float32": PackedLinear if torch.backends.mkldnn.is_available() else torch.nn.Linear,
    "bfloat16": PackedLinear if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.nn.Linear,
    "int8": torch.ao.nn.quantized.dynamic.Linear,
}


def text_lm() -> MusicLM:
    torch.manual_seed(0)
    cfg = LMConfig(card=CARD, dim=DIM, num_heads=4, num_layers=3, ffn_dim=256, cross_attention=True)
    return MusicLM(cfg).eval()


def text_states(batch: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randn(batch, length, DIM, generator=torch.Generator().manual_seed(1))


def sequence(model: MusicLM, batch: int = 2, frames: int = 12) -> torch.Tensor:
    codes = torch.randint(0, CARD, (batch, 4, frames), generator=torch.Generator().manual_seed(2))
    return model.pattern.build(codes, model.special)[0]


@torch.no_grad()
def test_cached_cross_attention_forward_matches_the_full_forward():
    model, states = text_lm(), text_states()
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    seq = sequence(model)
    cache = KVCache(seq.shape[2])
    parts = [model(seq[:, :, :4], states, mask, cache)]
    parts += [model(seq[:, :, s : s + 1], cache=cache) for s in range(4, seq.shape[2])]
    torch.testing.assert_close(torch.cat(parts, 2), model(seq, states, mask), atol=1e-5, rtol=0)
    assert cache.cross is not None and len(cache.cross) == model.config.num_layers


@torch.no_grad()
def test_split_cross_attention_projections_give_the_same_logits():
    model, states = text_lm(), text_states()
    seq = sequence(model)
    expected = model(seq, states)
    copy = deepcopy(model)
    for module in copy.modules():
        if isinstance(module, CrossAttention):
            module.split_projections()
            assert not hasattr(module, "in_proj")
    assert torch.equal(copy(seq, states), expected)


def greedy(model: MusicLM, states: torch.Tensor) -> torch.Tensor:
    null = torch.zeros_like(states)
    return model.generate(states, None, null, None, num_frames=50, temperature=0.0, cfg_coef=3.0)


@pytest.mark.parametrize(
    ("precision", "min_agreement", "max_logits_diff"),
    [("float32", 1.0, 1e-4), ("bfloat16", 0.85, 0.05), ("int8", 0.8, 0.2)],
)
@torch.no_grad()
def test_generation_copies_agree_with_float32(precision, min_agreement, max_logits_diff):
    model, states = text_lm(), text_states()
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    fast = model.for_generation(precision)
    assert fast.precision == precision and model.precision == "float32"
    assert isinstance(fast.heads, LINEARS[precision]) and isinstance(model.heads, torch.nn.Linear)
    expected = greedy(model, states)
    tokens = greedy(fast, states)
    agreement = float((tokens == expected).float().mean())
    assert agreement >= min_agreement, agreement
    seq = sequence(model)
    with fast.precision_context():
        logits = fast(seq, states).float()
    assert float((logits - model(seq, states)).abs().max()) <= max_logits_diff
    # the model itself is untouched: same names, dtypes and values
    assert model.state_dict().keys() == keys.keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, keys[name]), name
    assert torch.equal(greedy(model, states), expected)


@torch.no_grad()
def test_in_place_conversion_packs_the_model_itself():
    model, states = text_lm(), text_states()
    seq = sequence(model)
    expected, expected_tokens = model(seq, states), greedy(model, states)
    fast = model.for_generation("float32", inplace=True)
    assert fast is model and isinstance(model.heads, LINEARS["float32"])
    assert float((model(seq, states) - expected).abs().max()) <= 1e-4
    assert torch.equal(greedy(model, states), expected_tokens)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        text_lm().for_generation("float16")


@pytest.mark.slow  # 10+ s: a transformers release folder saved, loaded, quantized
def test_generate_cli_precision(tmp_path, capsys):
    """``python -m musicgen.generate --precision int8`` writes the WAV from a release folder;
    int8 on a GPU is one error line."""
    import soundfile as sf

    from musicgen.generate import main

    release = pytest.importorskip("tests.test_musicgen_pretrained")  # transformers, MiniLM
    tokenizer = release.transformers.AutoTokenizer.from_pretrained(release.minilm.get_model_path())
    release.save_release(tmp_path / "release", tokenizer)
    out = tmp_path / "out.wav"
    argv = ["--model", str(tmp_path / "release"), "--text", "a calm chorale", "--out", str(out)]
    assert main([*argv, "--duration", "0.2", "--device", "cpu", "--precision", "int8"]) == 0
    audio, rate = sf.read(out)
    assert rate == 32000 and len(audio) == 6400
    capsys.readouterr()
    assert main([*argv, "--device", "meta", "--precision", "int8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "CPU only" in err
