"""Export a trained MusicGen to the transformers layout (a ``save_pretrained`` folder that
``MusicgenForConditionalGeneration`` / ``MusicgenMelodyForConditionalGeneration.from_pretrained``
load) or to AudioCraft's release layout (``state_dict.bin`` + ``compression_state_dict.bin``,
loadable by AudioCraft's ``loaders.load_lm_model`` / ``load_compression_model``; the T5 is
written beside them).

    python -m musicgen.export CKPT OUTDIR --format transformers|audiocraft

``CKPT`` is a ``train.py`` checkpoint of ``solver=musicgen``/``musicgen_melody`` (EMA weights
when it has them). What exports where:

* **text through cross-attention** (``lm.cross_attention=true``): transformers'
  ``MusicgenForConditionalGeneration`` (pre-norm, no biases, max period 1e4, the standard delays;
  any text encoder transformers builds with ``AutoModelForTextEncoding``: T5, BERT/MiniLM...) and
  AudioCraft (``fuser.cross: [description]``; a T5 only). transformers masks the text padding as
  ours does by default; AudioCraft attends every text position (padding included, zero vectors),
  as ours does with ``released_layout``: each reference gives the logits of a model whose padding
  handling differs from its own for one caption at a time (no padding), not for a batch of
  captions of different lengths.
* **melody** (chroma and text prepended): only models trained with
  ``solver.module.released_layout=true`` (or fine-tuned from a released folder), whose prefix is
  the released one: chroma frames then text, every position attended (padding and a dropped text
  are zero vectors), a dropped melody the projected one-hot of chroma bin 0. Ours otherwise puts
  the text first and masks what is dropped, which neither reference can read. To transformers'
  ``MusicgenMelodyForConditionalGeneration`` (``chroma_length`` = the model's melody frames; its
  feature extractor's settings in ``preprocessor_config.json``) and to AudioCraft (``fuser.prepend:
  [self_wav, description]``, a ``chroma_stem`` conditioner; a T5 only). Both need a melody of a
  fixed number of chroma frames (``duration_frames``) at the chroma hop (no ``step_aligned``).
  Neither reference stems as ours may: AudioCraft keeps Demucs' vocals + other, transformers'
  extractor takes the audio (or Demucs' stems) it is given.
* **text prepended** (no cross-attention, no melody): to AudioCraft (``fuser.prepend:
  [description]``) with ``released_layout`` (AudioCraft attends the padding and the zero vectors
  of a dropped text, and adds positions to them, where ours would mask them); transformers has no
  prefix-conditioned text model, so it is refused there.

AudioCraft's T5 tokenises without truncation, ours at ``text.max_length`` tokens: captions longer
than that differ. AudioCraft's ``MusicGen.get_pretrained(OUTDIR)`` asserts a training segment
longer than its default ``extend_stride`` (18 s); for shorter ones build its ``MusicGen(name,
load_compression_model(OUTDIR), load_lm_model(OUTDIR), max_duration)``. Anything else is refused
with the option to train with.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from musicgen.compression import CompressionModel
from musicgen.compression.released import CODEC_FILE, StereoCodec, our_codec_key
from musicgen.errors import UserError
from musicgen.lm.audiocraft import CHROMA_WINDOW, CONDITIONERS, LM_FILE, T5_DIMS
from musicgen.musicgen_model import MusicGen

DECODER = "decoder.model.decoder."
FORMATS = ("transformers", "audiocraft")
RELEASED = "train with solver.module.released_layout=true"


def _check_decoder(model: MusicGen) -> None:
    """transformers' MusicGen decoders are pre-norm without biases, with the standard delays."""
    cfg = model.lm.config
    if cfg.bias or not cfg.norm_first or cfg.max_period != 10000.0:
        raise UserError(
            "transformers' MusicGen decoder is pre-norm without biases (max_period 1e4): train "
            "with solver.module.lm.bias=false and lm.norm_first=true, or export with --format "
            "audiocraft"
        )
    channels = model.channels
    expected = [k // channels for k in range(cfg.n_q)] if channels == 2 else list(range(cfg.n_q))
    if model.lm.pattern.delays != expected:
        raise UserError(f"transformers' MusicGen uses the delays {expected}, this model another")


def _check_melody(model: MusicGen, where: str) -> None:
    """A melody model exports when its prefix is the released one, on a fixed chroma length."""
    melody, cfg = model.conditions.melody, model.lm.config
    if cfg.cross_attention:
        raise UserError(
            f"{where}'s melody model prepends its conditions: train with lm.cross_attention=false"
        )
    if model.conditions.text is None:
        raise UserError(f"{where}'s melody model reads a text too: train with a text condition")
    if not model.conditions.released_layout:
        raise UserError(
            f"this melody model puts the text before the chroma and masks dropped conditions; "
            f"{where}'s melody model reads the chroma first and attends every position: "
            f"{RELEASED} to export"
        )
    if melody.duration_frames is None or melody.upsample != 1:
        raise UserError(
            f"{where}'s melody model reads a fixed number of chroma frames at the chroma hop: "
            "train with melody.duration_frames set (solver.data.segment_seconds) and without "
            "melody.step_aligned"
        )


def _check_transformers(model: MusicGen) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES

    text = model.conditions.text
    if model.has_melody:
        _check_melody(model, "transformers")
    elif not model.lm.config.cross_attention:
        raise UserError(
            "this model prepends the text; transformers' text-only MusicGen reads it through "
            "cross-attention: train with solver.module.lm.cross_attention=true, or export with "
            f"--format audiocraft ({RELEASED})"
        )
    kind = text.encoder.config.model_type
    if kind not in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES:
        raise UserError(f"transformers cannot build a {kind!r} text encoder inside MusicGen")
    _check_decoder(model)


def _t5_name(model: MusicGen) -> str:
    """The T5 AudioCraft loads by name: the model's own (a release converted from transformers
    names it ``t5``: its width picks t5-small or t5-base)."""
    text = model.conditions.text
    name = text.name
    if name not in T5_DIMS and text.encoder.config.model_type == "t5":
        widths = {dim: n for n, dim in T5_DIMS.items() if list(T5_DIMS.values()).count(dim) == 1}
        name = widths.get(text.encoder_dim, name)
    if name not in T5_DIMS or text.encoder_dim != T5_DIMS[name]:
        raise UserError(
            f"AudioCraft's text conditioner is a T5 it loads by name ({list(T5_DIMS)}); this "
            f"model's text encoder is {text.name!r}: train with text.name=t5-base"
        )
    return name


def _check_audiocraft(model: MusicGen) -> str:
    """Refuses what AudioCraft cannot read as we do; the T5 name to write."""
    if model.has_melody:
        _check_melody(model, "AudioCraft")
        melody = model.conditions.melody
        winlen = melody.chroma.winlen
        if winlen & (winlen - 1):
            raise UserError(f"AudioCraft's chroma window is a power of 2, this model's is {winlen}")
    elif not model.lm.config.cross_attention and not model.conditions.released_layout:
        raise UserError(
            "this model prepends the text with its padding and dropped texts masked; AudioCraft "
            f"attends them (zero vectors with positions added): {RELEASED} to export"
        )
    if model.conditions.text is None:
        raise UserError("export needs a text condition")
    return _t5_name(model)


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


def _hf_config(model: MusicGen) -> Any:
    """The ``MusicgenConfig`` / ``MusicgenMelodyConfig`` of ``model``."""
    from transformers import (
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
    )

    cfg, melody = model.lm.config, model.conditions.melody
    mono = model.codec.mono if isinstance(model.codec, StereoCodec) else model.codec
    decoder = (MusicgenMelodyDecoderConfig if melody is not None else MusicgenDecoderConfig)(
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
    parts = {
        "text_encoder": model.conditions.text.encoder.config.to_dict(),
        "audio_encoder": _codec_config(mono, mono.num_codebooks).to_dict(),
        "decoder": decoder.to_dict(),
    }
    if melody is None:
        return MusicgenConfig(**parts)
    return MusicgenMelodyConfig(
        **parts, num_chroma=melody.n_chroma, chroma_length=melody.duration_frames
    )


def _projection(
    hf_state: dict, name: str, linear: torch.nn.Linear, what: str
) -> dict[str, torch.Tensor]:
    """``name.weight/bias`` from ``linear``; transformers leaves the projection out when the
    widths agree (the identity), and so must ``linear`` be then."""
    if f"{name}.weight" in hf_state:
        return {f"{name}.{k}": v for k, v in linear.state_dict().items()}
    identity = torch.eye(linear.out_features, dtype=linear.weight.dtype)
    if not torch.equal(linear.weight, identity) or (linear.bias is not None and linear.bias.any()):
        raise UserError(f"the {what} projection is not the identity transformers assumes")
    return {}


def to_transformers(model: MusicGen) -> Any:
    """A ``MusicgenForConditionalGeneration`` (text-only) or
    ``MusicgenMelodyForConditionalGeneration`` (melody) with ``model``'s weights (every tensor
    set)."""
    from transformers import (
        GenerationConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyForConditionalGeneration,
    )

    _check_transformers(model)
    cfg, text, melody = model.lm.config, model.conditions.text, model.conditions.melody
    mono = model.codec.mono if isinstance(model.codec, StereoCodec) else model.codec
    kind = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    hf = kind(_hf_config(model))
    hf_state = hf.state_dict()
    state = _decoder_state(model, cross_attention=melody is None)
    state |= _projection(hf_state, "enc_to_dec_proj", text.proj, "text")
    if melody is not None:
        state |= _projection(hf_state, "audio_enc_to_dec_proj", melody.proj, "chroma")
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


def feature_extractor(model: MusicGen) -> Any:
    """transformers' ``MusicgenMelodyFeatureExtractor`` with the chroma settings of ``model``."""
    from transformers import MusicgenMelodyFeatureExtractor

    melody = model.conditions.melody
    chroma = melody.chroma
    seconds = model.segment_seconds or melody.duration_frames * chroma.hop / chroma.sample_rate
    return MusicgenMelodyFeatureExtractor(
        feature_size=chroma.n_chroma,
        num_chroma=chroma.n_chroma,
        sampling_rate=chroma.sample_rate,
        n_fft=chroma.winlen,
        hop_length=chroma.hop,
        chunk_length=math.ceil(seconds),
    )


def _decoder_state(model: MusicGen, cross_attention: bool) -> dict[str, torch.Tensor]:
    """The decoder's tensors under transformers' names (``encoder_attn`` when
    ``cross_attention``)."""
    cfg, lm = model.lm.config, model.lm.state_dict()
    state = {f"{DECODER}embed_tokens.{k}.weight": lm["emb"][k] for k in range(cfg.n_q)}
    for k, head in enumerate(lm["heads.weight"].chunk(cfg.n_q)):
        state[f"decoder.lm_heads.{k}.weight"] = head
    for p in ("weight", "bias"):
        state[f"{DECODER}layer_norm.{p}"] = lm[f"out_norm.{p}"]
    blocks = {"self_attn": "self_attn"}
    norms = {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
    if cross_attention:
        blocks["cross_attention"] = "encoder_attn"
        norms["norm_cross"] = "encoder_attn_layer_norm"
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
    """The LM and condition projections under AudioCraft's ``LMModel`` names."""
    cfg, lm = model.lm.config, model.lm.state_dict()
    state = {f"emb.{k}.weight": lm["emb"][k] for k in range(cfg.n_q)}
    for param in ("weight", "bias"):
        if f"heads.{param}" in lm:
            for k, head in enumerate(lm[f"heads.{param}"].chunk(cfg.n_q)):
                state[f"linears.{k}.{param}"] = head
    for key, tensor in lm.items():
        if key.startswith("layers."):
            name = key.replace("in_proj.weight", "in_proj_weight").replace(
                "in_proj.bias", "in_proj_bias"
            )
            state["transformer." + name] = tensor
        elif key.startswith("out_norm."):
            state[key] = tensor
    text, melody = model.conditions.text, model.conditions.melody
    for name, conditioner in (("description", text), ("self_wav", melody)):
        if conditioner is not None:
            proj = conditioner.proj.state_dict()
            state |= {f"{CONDITIONERS}{name}.output_proj.{k}": v for k, v in proj.items()}
    if melody is not None:  # the chroma STFT's window, a buffer of AudioCraft's conditioner
        state[CHROMA_WINDOW] = torch.hann_window(melody.chroma.winlen)
    return {k: v.contiguous() for k, v in state.items()}


def _chroma_settings(model: MusicGen) -> dict:
    """AudioCraft's ``chroma_stem`` settings of the melody condition."""
    melody, seconds = model.conditions.melody, model.segment_seconds
    chroma = melody.chroma
    frames = None if seconds is None else chroma.num_frames(int(chroma.sample_rate * seconds))
    if frames != melody.duration_frames:
        raise UserError(
            f"AudioCraft fits the chroma to the training segment ({seconds} s: {frames} frames); "
            f"this model reads {melody.duration_frames}: train with the default melody length"
        )
    settings = {
        "sample_rate": chroma.sample_rate,
        "n_chroma": chroma.n_chroma,
        "radix2_exp": int(math.log2(chroma.winlen)),
        "argmax": True,
        "match_len_on_eval": True,
        "eval_wavs": None,
        "n_eval_wavs": 0,
    }
    if chroma.hop != chroma.winlen // 4:
        settings["winhop"] = chroma.hop
    return settings


def to_audiocraft(model: MusicGen) -> tuple[dict, dict]:
    """``(LM package, codec package)`` as AudioCraft's ``export_lm`` / ``export_encodec`` write
    them: the training config AudioCraft rebuilds the models from, and their weights."""
    t5_name = _check_audiocraft(model)
    cfg = model.lm.config
    stereo = isinstance(model.codec, StereoCodec)
    mono = model.codec.mono if stereo else model.codec
    seconds = model.segment_seconds or 30.0
    conditioners = {"description": {"model": "t5", "t5": {"name": t5_name, "finetune": False}}}
    fuser = {"prepend": ["description"], "cross": []}
    if cfg.cross_attention:
        fuser = {"prepend": [], "cross": ["description"]}
    dropout = {"text": {}, "wav": {}}
    if model.has_melody:
        conditioners["self_wav"] = {"model": "chroma_stem", "chroma_stem": _chroma_settings(model)}
        fuser["prepend"] = ["self_wav", "description"]
        dropout["wav"] = {"self_wav": 0.5}
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
            "norm_first": cfg.norm_first,
            "bias_ff": cfg.bias,
            "bias_attn": cfg.bias,
            "bias_proj": cfg.bias,
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
        "attribute_dropout": {"args": {"active_on_eval": False}, **dropout},
        "classifier_free_guidance": {
            "training_dropout": 0.2 if model.has_melody else 0.3,
            "inference_coef": 3.0,
        },
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "input_interpolate": [],
            **fuser,
        },
        "conditioners": conditioners,
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
    """Export ``model`` into the folder ``out`` in the layout ``fmt`` (see :func:`export`):
    transformers' folder with the tokenizer (and, for melody, the feature extractor's
    ``preprocessor_config.json``), or AudioCraft's two files with the T5 folder beside them."""
    out = Path(out)
    text = model.conditions.text
    if fmt == "transformers":
        hf = to_transformers(model)
        hf.save_pretrained(out)
        _save_tokenizer(text, out)
        if model.has_melody:
            feature_extractor(model).save_pretrained(out)
        return out
    lm_package, codec_package = to_audiocraft(model)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(lm_package, out / LM_FILE)
    torch.save(codec_package, out / CODEC_FILE)
    name = _t5_name(model)  # the folder our loader looks for beside the files
    text.encoder.save_pretrained(out / name)
    text.tokenizer.save_pretrained(out / name)
    return out


def _save_tokenizer(text: Any, out: Path) -> None:
    """The text tokenizer, with ``model_max_length`` = the tokens our model keeps (what our
    loader truncates to, and transformers' tokenizer with ``truncation=True``)."""
    tokenizer = text.tokenizer
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = text.max_length
    try:
        tokenizer.save_pretrained(out)
    finally:
        tokenizer.model_max_length = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("checkpoint", help="train.py .ckpt of solver=musicgen or musicgen_melody")
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
