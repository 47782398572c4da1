"""Export a trained MusicGen to the transformers layout, loadable by
``MusicgenForConditionalGeneration.from_pretrained(OUTDIR)``.

    python -m musicgen.export CKPT OUTDIR --format transformers

``CKPT`` is a ``train.py`` checkpoint of ``solver=musicgen`` (EMA weights when it has them).
transformers' text-only MusicGen reads the text through cross-attention with the padding masked:
models trained with ``lm.cross_attention=true`` (pre-norm, no biases) export exactly, text
encoder, projection, decoder and codec; prefix-conditioned and melody models have no
transformers counterpart that reads their conditions as they were trained, and are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from musicgen.compression import CompressionModel
from musicgen.compression.released import StereoCodec, our_codec_key
from musicgen.errors import UserError
from musicgen.musicgen_model import MusicGen

DECODER = "decoder.model.decoder."


def _check_exportable(model: MusicGen) -> None:
    cfg = model.lm.config
    if model.has_melody or model.conditions.text is None:
        raise UserError(
            "only text-only models export to transformers (its melody model reads the chroma in "
            "the released prefix layout, which our melody models are not trained with)"
        )
    if not cfg.cross_attention:
        raise UserError(
            "this model prepends the text; transformers' MusicGen reads it through "
            "cross-attention: train with solver.module.lm.cross_attention=true to export"
        )
    if cfg.bias or not cfg.norm_first or cfg.max_period != 10000.0:
        raise UserError(
            "transformers' MusicGen decoder is pre-norm without biases (max_period 1e4)"
        )
    channels = model.channels
    expected = [k // channels for k in range(cfg.n_q)] if channels == 2 else list(range(cfg.n_q))
    if model.lm.pattern.delays != expected:
        raise UserError(f"transformers' MusicGen uses the delays {expected}, this model another")


def _codec_config(codec: CompressionModel, n_q: int) -> Any:
    from transformers import EncodecConfig

    c = codec.config
    return EncodecConfig(
        sampling_rate=c.sample_rate,
        audio_channels=c.channels,
        num_filters=c.n_filters,
        hidden_size=c.dimension,
        codebook_dim=c.dimension,
        upsampling_ratios=list(c.ratios),
        norm_type=c.norm,
        use_causal_conv=c.causal,
        pad_mode=c.pad_mode,
        use_conv_shortcut=not c.true_skip,
        num_residual_layers=c.n_residual_layers,
        num_lstm_layers=c.lstm,
        compress=c.compress,
        codebook_size=c.bins,
        normalize=c.normalize,
        target_bandwidths=[c.kbps(n_q) + 1e-6],  # transformers counts codebooks from it
        chunk_length_s=c.segment,
        overlap=c.overlap if c.segment is not None else None,
    )


def to_transformers(model: MusicGen) -> Any:
    """A ``MusicgenForConditionalGeneration`` with ``model``'s weights (every tensor set)."""
    from transformers import (
        GenerationConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
    )

    _check_exportable(model)
    cfg, text = model.lm.config, model.conditions.text
    mono = model.codec.mono if isinstance(model.codec, StereoCodec) else model.codec
    decoder = MusicgenDecoderConfig(
        vocab_size=cfg.card,
        hidden_size=cfg.dim,
        num_hidden_layers=cfg.num_layers,
        ffn_dim=cfg.ffn_dim,
        num_attention_heads=cfg.num_heads,
        num_codebooks=cfg.n_q,
        audio_channels=model.channels,
        activation_function="gelu",
        dropout=0.0,
        pad_token_id=cfg.card,
        bos_token_id=cfg.card,
    )
    config = MusicgenConfig(
        text_encoder=text.encoder.config.to_dict(),
        audio_encoder=_codec_config(mono, mono.num_codebooks).to_dict(),
        decoder=decoder.to_dict(),
    )
    hf = MusicgenForConditionalGeneration(config)
    state = _decoder_state(model)
    if "enc_to_dec_proj.weight" in hf.state_dict():
        state |= {f"enc_to_dec_proj.{k}": v for k, v in text.proj.state_dict().items()}
    elif not torch.equal(text.proj.weight, torch.eye(cfg.dim)) or text.proj.bias.any():
        raise UserError(
            "the text projection is not the identity transformers assumes (equal widths)"
        )
    state |= {f"text_encoder.{k}": v for k, v in text.encoder.state_dict().items()}
    ours = mono.state_dict()
    for key in hf.audio_encoder.state_dict():
        state[f"audio_encoder.{key}"] = ours[our_codec_key(key, set(ours))]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("embed_positions.weights")]
    if missing or unexpected:
        raise UserError(f"export left tensors unset: {(missing + unexpected)[:4]}")
    hf.generation_config = GenerationConfig(
        do_sample=True,
        top_k=250,
        temperature=1.0,
        guidance_scale=3.0,
        max_length=1500,
        decoder_start_token_id=cfg.card,
        pad_token_id=cfg.card,
        bos_token_id=cfg.card,
    )
    return hf.eval()


def _decoder_state(model: MusicGen) -> dict[str, torch.Tensor]:
    cfg, lm = model.lm.config, model.lm.state_dict()
    state = {f"{DECODER}embed_tokens.{k}.weight": lm["emb"][k] for k in range(cfg.n_q)}
    for k, head in enumerate(lm["heads.weight"].chunk(cfg.n_q)):
        state[f"decoder.lm_heads.{k}.weight"] = head
    for p in ("weight", "bias"):
        state[f"{DECODER}layer_norm.{p}"] = lm[f"out_norm.{p}"]
    blocks = {"self_attn": "self_attn", "cross_attention": "encoder_attn"}
    norms = {
        "norm1": "self_attn_layer_norm",
        "norm_cross": "encoder_attn_layer_norm",
        "norm2": "final_layer_norm",
    }
    for i in range(cfg.num_layers):
        ours, hf = f"layers.{i}.", f"{DECODER}layers.{i}."
        for block, hf_block in blocks.items():
            q, k, v = lm[f"{ours}{block}.in_proj.weight"].chunk(3)
            for name, tensor in zip("qkv", (q, k, v), strict=True):
                state[f"{hf}{hf_block}.{name}_proj.weight"] = tensor
            state[f"{hf}{hf_block}.out_proj.weight"] = lm[f"{ours}{block}.out_proj.weight"]
        for norm, hf_norm in norms.items():
            for p in ("weight", "bias"):
                state[f"{hf}{hf_norm}.{p}"] = lm[f"{ours}{norm}.{p}"]
        state[f"{hf}fc1.weight"] = lm[f"{ours}linear1.weight"]
        state[f"{hf}fc2.weight"] = lm[f"{ours}linear2.weight"]
    return {k: v.contiguous() for k, v in state.items()}


def export(checkpoint: str | Path, out: str | Path, fmt: str = "transformers") -> Path:
    """Write ``out`` (a ``save_pretrained`` folder with the text tokenizer) from ``checkpoint``."""
    if fmt != "transformers":
        raise UserError(f"unknown export format {fmt!r}: only transformers is supported")
    model = MusicGen.from_checkpoint(checkpoint)
    hf = to_transformers(model)
    out = Path(out)
    hf.save_pretrained(out)
    model.conditions.text.tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("checkpoint", help="train.py .ckpt of solver=musicgen")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--format", default="transformers", choices=["transformers"])
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out, args.format)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{out}: MusicgenForConditionalGeneration.from_pretrained({str(out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
