"""Export a trained MusicGen to the transformers layout, loadable by
``MusicgenForConditionalGeneration.from_pretrained(OUTDIR)``, or to AudioCraft's release layout
(``state_dict.bin`` + ``compression_state_dict.bin``, loadable by AudioCraft's
``loaders.load_lm_model`` / ``load_compression_model``; the T5 is written beside them).

    python -m musicgen.export CKPT OUTDIR --format transformers|audiocraft

``CKPT`` is a ``train.py`` checkpoint of ``solver=musicgen`` (EMA weights when it has them).
transformers' text-only MusicGen reads the text through cross-attention with the padding masked:
models trained with ``lm.cross_attention=true`` (pre-norm, no biases) export exactly, text
encoder, projection, decoder and codec; prefix-conditioned and melody models have no
transformers counterpart that reads their conditions as they were trained, and are refused.
AudioCraft needs a T5 text encoder (``text.name`` t5-small/base/large...) and attends every text
position (padding included) where ours masks the padding: equal for one caption at a time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from musicgen.compression import CompressionModel
from musicgen.compression.released import CODEC_FILE, StereoCodec, our_codec_key
from musicgen.errors import UserError
from musicgen.lm.audiocraft import CONDITIONERS, LM_FILE, T5_DIMS
from musicgen.musicgen_model import MusicGen

DECODER = "decoder.model.decoder."
FORMATS = ("transformers", "audiocraft")


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


def _audiocraft_lm_state(model: MusicGen) -> dict[str, torch.Tensor]:
    cfg, lm = model.lm.config, model.lm.state_dict()
    state = {f"emb.{k}.weight": lm["emb"][k] for k in range(cfg.n_q)}
    for k, head in enumerate(lm["heads.weight"].chunk(cfg.n_q)):
        state[f"linears.{k}.weight"] = head
    for key, tensor in lm.items():
        if key.startswith("layers."):
            name = key.replace("in_proj.weight", "in_proj_weight")
            state["transformer." + name] = tensor
        elif key.startswith("out_norm."):
            state[key] = tensor
    proj = model.conditions.text.proj.state_dict()
    state |= {f"{CONDITIONERS}description.output_proj.{k}": v for k, v in proj.items()}
    return {k: v.contiguous() for k, v in state.items()}


def to_audiocraft(model: MusicGen) -> tuple[dict, dict]:
    """``(LM package, codec package)`` as AudioCraft's ``export_lm`` / ``export_encodec`` write
    them: the training config AudioCraft rebuilds the models from, and their weights."""
    _check_exportable(model)
    text, cfg = model.conditions.text, model.lm.config
    if text.name not in T5_DIMS or text.encoder_dim != T5_DIMS[text.name]:
        raise UserError(
            f"AudioCraft's text conditioner is a T5 it loads by name ({list(T5_DIMS)}); this "
            f"model's text encoder is {text.name!r}: train with text.name=t5-base"
        )
    stereo = isinstance(model.codec, StereoCodec)
    mono = model.codec.mono if stereo else model.codec
    seconds = model.segment_seconds or 30.0
    lm_cfg = {
        "device": "cpu",
        "dtype": "float32",
        "sample_rate": mono.sample_rate,
        "lm_model": "transformer_lm",
        "dataset": {"segment_duration": seconds},
        "transformer_lm": {
            "dim": cfg.dim,
            "num_heads": cfg.num_heads,
            "num_layers": cfg.num_layers,
            "hidden_scale": cfg.ffn_dim / cfg.dim,
            "n_q": cfg.n_q,
            "card": cfg.card,
            "dropout": cfg.dropout,
            "activation": "gelu",
            "norm_first": True,
            "bias_ff": False,
            "bias_attn": False,
            "bias_proj": False,
            "causal": True,
            "custom": False,
            "memory_efficient": False,
            "positional_embedding": "sin",
            "max_period": cfg.max_period,
            "norm": "layer_norm",
            "layer_scale": None,
            "weight_init": None,
        },
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": model.lm.pattern.delays, "flatten_first": 0, "empty_initial": 0},
        },
        "attribute_dropout": {},
        "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": [],
            "cross": ["description"],
            "input_interpolate": [],
        },
        "conditioners": {
            "description": {"model": "t5", "t5": {"name": text.name, "finetune": False}}
        },
        "interleave_stereo_codebooks": {"use": stereo, "per_timestep": False},
    }
    c = mono.config
    codec_cfg = {
        "device": "cpu",
        "sample_rate": c.sample_rate,
        "channels": c.channels,
        "compression_model": "encodec",
        "encodec": {
            "autoencoder": "seanet",
            "quantizer": "rvq",
            "sample_rate": c.sample_rate,
            "channels": c.channels,
            "causal": c.causal,
            "renormalize": False,
        },
        "seanet": {
            "dimension": c.dimension,
            "channels": c.channels,
            "causal": c.causal,
            "n_filters": c.n_filters,
            "n_residual_layers": c.n_residual_layers,
            "ratios": list(c.ratios),
            "activation": "ELU",
            "activation_params": {"alpha": 1.0},
            "norm": c.norm,
            "norm_params": {},
            "kernel_size": 7,
            "residual_kernel_size": 3,
            "last_kernel_size": 7,
            "dilation_base": 2,
            "pad_mode": c.pad_mode,
            "true_skip": c.true_skip,
            "compress": c.compress,
            "lstm": c.lstm,
            "disable_norm_outer_blocks": 0,
            "encoder": {},
            "decoder": {},
        },
        "rvq": {"n_q": c.n_q, "bins": c.bins, "decay": c.decay, "q_dropout": False},
    }
    meta = {"version": "1.3.0", "exported": True}
    lm_package = {"best_state": _audiocraft_lm_state(model), "xp.cfg": _yaml(lm_cfg), **meta}
    codec_state = {k: v.contiguous() for k, v in mono.state_dict().items()}
    return lm_package, {"best_state": codec_state, "xp.cfg": _yaml(codec_cfg), **meta}


def _yaml(config: dict) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config))


def export(checkpoint: str | Path, out: str | Path, fmt: str = "transformers") -> Path:
    """Write ``out`` from ``checkpoint``: a ``save_pretrained`` folder with the text tokenizer
    (transformers), or AudioCraft's two ``.bin`` files with the T5 folder beside them."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: choose one of {list(FORMATS)}")
    model = MusicGen.from_checkpoint(checkpoint)
    return write(model, out, fmt)


def write(model: MusicGen, out: str | Path, fmt: str) -> Path:
    """Export ``model`` into the folder ``out`` in the layout ``fmt`` (see :func:`export`)."""
    out = Path(out)
    text = model.conditions.text
    if fmt == "transformers":
        to_transformers(model).save_pretrained(out)
        text.tokenizer.save_pretrained(out)
        return out
    lm_package, codec_package = to_audiocraft(model)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(lm_package, out / LM_FILE)
    torch.save(codec_package, out / CODEC_FILE)
    text.encoder.save_pretrained(out / text.name)
    text.tokenizer.save_pretrained(out / text.name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("checkpoint", help="train.py .ckpt of solver=musicgen")
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--format", default="transformers", choices=FORMATS)
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out, args.format)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{out}: {args.format} layout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
