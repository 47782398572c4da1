"""Official MusicGen weights in the Hugging Face ``transformers`` layout -> :class:`MusicLM`.

The HF decoders (``MusicgenMelodyForCausalLM`` / ``MusicgenForCausalLM``, the ``decoder.`` part
of ``MusicgenMelodyForConditionalGeneration`` / ``MusicgenForConditionalGeneration``) are our LM up
to parameter layout: K embeddings of
``vocab_size + 1`` entries summed, ``[cos, sin]`` sinusoidal positions from 0 over
``[conditions, codes]``, pre-norm layers (LayerNorms with bias, no other bias), exact GELU, a
final LayerNorm and K bias-free heads. Its separate q/k/v projections are packed into our
``in_proj`` and its K heads into our one fused ``heads`` layer. The text-only models'
cross-attention (``encoder_attn``, ``encoder_attn_layer_norm``) becomes our ``cross_attention``
block (``LMConfig.cross_attention``): the projected T5 states (``enc_to_dec_proj``, zero at
padding) are attended with the padding masked, and CFG's null rows are all-zero states, fully
masked, which our default :class:`~musicgen.conditioners.ConditionProvider` gives (a dropped text
is zero vectors, mask False).

The conditions are prepended differently from our own models': HF puts the projected chroma
(``audio_enc_to_dec_proj``, looped to ``chroma_length`` frames) *before* the projected T5 text
(``enc_to_dec_proj``) and attends to every prefix position (text padding and a dropped text are
zero vectors, not masked keys; a dropped melody is the projected one-hot of chroma bin 0).
:func:`load_hf_musicgen` builds a
:class:`~musicgen.conditioners.ConditionProvider` with ``released_layout`` set, which does that:
its prefix and null prefix fed to :meth:`MusicLM.generate` give transformers' ``generate``
(``guidance_scale``) tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from musicgen.conditioners.melody import MelodyConditioner
from musicgen.conditioners.provider import ConditionProvider
from musicgen.conditioners.text import TextConditioner
from musicgen.errors import UserError
from musicgen.lm.config import LMConfig
from musicgen.lm.model import MusicLM

DECODER = "model.decoder."


@dataclass
class HFMusicgen:
    """What :func:`load_hf_musicgen` reads: the converted ``lm``, the condition
    projections (``{"text": ..., "melody": ...}``, ``nn.Linear`` state dicts; a name is absent
    when HF needs no projection for it), HF's ``chroma_length`` (melody frames prepended) and the
    ``conditions`` (T5 text and, for melody, chroma, as the released model reads them; None for a
    decoder-only folder or a folder without tokenizer files) and the whole HF model
    (``hf_model``, for its audio encoder)."""

    lm: MusicLM
    projections: dict[str, dict[str, torch.Tensor]]
    chroma_length: int | None
    conditions: ConditionProvider | None = None
    hf_model: Any = None


def _get(config: Any, name: str) -> Any:
    return config[name] if isinstance(config, Mapping) else getattr(config, name)


def _decoder_config(config: Any) -> Any:
    """The decoder part of a ``MusicgenMelodyConfig`` / ``MusicgenConfig`` (or the decoder config
    itself)."""
    if isinstance(config, Mapping):
        return config.get("decoder", config)
    return getattr(config, "decoder", config)


def lm_config_from_hf(config: Any) -> LMConfig:
    """:class:`LMConfig` of the HF decoder described by ``config`` (a ``MusicgenMelodyConfig`` or
    ``MusicgenConfig``, its ``decoder`` config, or their ``to_dict()``)."""
    decoder = _decoder_config(config)
    activation = _get(decoder, "activation_function")
    if activation != "gelu":
        raise ValueError(f"only the exact GELU converts, the HF decoder uses {activation!r}")
    n_q, channels = int(_get(decoder, "num_codebooks")), int(_get(decoder, "audio_channels"))
    if channels not in (1, 2) or n_q % channels:
        raise ValueError(f"cannot lay out {n_q} codebooks over {channels} audio channels")
    return LMConfig(
        n_q=n_q,
        card=int(_get(decoder, "vocab_size")),
        dim=int(_get(decoder, "hidden_size")),
        num_heads=int(_get(decoder, "num_attention_heads")),
        num_layers=int(_get(decoder, "num_hidden_layers")),
        ffn_dim=int(_get(decoder, "ffn_dim")),
        dropout=0.0,
        max_period=10000.0,
        norm_first=True,
        bias=False,
        # stereo interleaves (left k, right k): both codebooks of level k have delay k
        delays=[k // channels for k in range(n_q)] if channels == 2 else None,
        cross_attention=_get(decoder, "model_type") == "musicgen_decoder",
    )


def _decoder_state(hf_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder's tensors keyed as in ``MusicgenMelodyForCausalLM`` (``model.decoder.*``,
    ``lm_heads.*``), from either that model's or the full model's state dict."""
    if any(key.startswith("decoder." + DECODER) for key in hf_state_dict):
        return {
            k[len("decoder.") :]: v for k, v in hf_state_dict.items() if k.startswith("decoder.")
        }
    return dict(hf_state_dict)


def lm_state_from_hf(
    hf_state_dict: Mapping[str, torch.Tensor], config: Any
) -> tuple[LMConfig, dict[str, torch.Tensor]]:
    """``(LMConfig, MusicLM state dict)`` equivalent to the HF MusicGen(-Melody) decoder.

    ``hf_state_dict`` is the state dict of ``Musicgen(Melody)ForConditionalGeneration`` or of its
    ``Musicgen(Melody)ForCausalLM`` decoder; ``config`` its config (see :func:`lm_config_from_hf`).
    Every decoder tensor is used once; a missing one is a ``KeyError`` naming it.
    """
    cfg = lm_config_from_hf(config)
    source = _decoder_state(hf_state_dict)
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in source:
            raise KeyError(f"the HF MusicGen state dict has no {name!r}")
        used.add(name)
        return source[name]

    # ``scale_embedding`` is not converted: the HF decoder sets ``embed_scale`` from it but never
    # multiplies by it (nor does AudioCraft's LM scale its embeddings)
    emb = [take(f"{DECODER}embed_tokens.{k}.weight") for k in range(cfg.n_q)]
    state = {"emb": torch.stack(emb)}
    for i in range(cfg.num_layers):
        hf, ours = f"{DECODER}layers.{i}.", f"layers.{i}."
        attention = {"self_attn": ("self_attn", "self_attn_layer_norm", "norm1")}
        if cfg.cross_attention:
            attention["cross_attention"] = ("encoder_attn", "encoder_attn_layer_norm", "norm_cross")
        for block, (hf_block, hf_norm, norm) in attention.items():
            qkv = [take(f"{hf}{hf_block}.{p}_proj.weight") for p in "qkv"]
            state[f"{ours}{block}.in_proj.weight"] = torch.cat(qkv)
            state[f"{ours}{block}.out_proj.weight"] = take(f"{hf}{hf_block}.out_proj.weight")
            for p in ("weight", "bias"):
                state[f"{ours}{norm}.{p}"] = take(f"{hf}{hf_norm}.{p}")
        state[ours + "linear1.weight"] = take(hf + "fc1.weight")
        state[ours + "linear2.weight"] = take(hf + "fc2.weight")
        for p in ("weight", "bias"):
            state[f"{ours}norm2.{p}"] = take(f"{hf}final_layer_norm.{p}")
    for p in ("weight", "bias"):
        state[f"out_norm.{p}"] = take(f"{DECODER}layer_norm.{p}")
    state["heads.weight"] = torch.cat([take(f"lm_heads.{k}.weight") for k in range(cfg.n_q)])
    ignored = {k for k in source if k.endswith("embed_positions.weights")}
    extra = set(source) - used - ignored
    if extra:
        raise ValueError(f"HF decoder tensors with no counterpart in MusicLM: {sorted(extra)}")
    return cfg, state


def condition_projections_from_hf(
    hf_state_dict: Mapping[str, torch.Tensor],
) -> dict[str, dict[str, torch.Tensor]]:
    """``{"text": enc_to_dec_proj, "melody": audio_enc_to_dec_proj}`` as ``nn.Linear`` state
    dicts (the ``proj`` of :class:`TextConditioner` / :class:`MelodyConditioner`); HF leaves a
    projection out when the widths already agree, and so does this."""
    names = {"text": "enc_to_dec_proj.", "melody": "audio_enc_to_dec_proj."}
    return {
        kind: {p: hf_state_dict[prefix + p] for p in ("weight", "bias")}
        for kind, prefix in names.items()
        if prefix + "weight" in hf_state_dict
    }


def _load_projection(linear: torch.nn.Linear, state: dict[str, torch.Tensor] | None) -> None:
    """``linear`` <- ``state``; HF's missing projection (equal widths) is the identity."""
    if state is None:
        state = {"weight": torch.eye(linear.out_features), "bias": torch.zeros(linear.out_features)}
    linear.load_state_dict(state)


def released_conditions(
    hf_model: Any,
    projections: dict[str, dict[str, torch.Tensor]],
    tokenizer: object,
    chroma: dict | None = None,
) -> ConditionProvider:
    """The condition provider of a ``Musicgen(Melody)ForConditionalGeneration``: its T5 encoder
    with ``tokenizer`` (no truncation below the tokenizer's limit) through the converted
    projection; for melody also the chroma on ``chroma_length`` frames, in the released layout
    (melody then text, all attended); for text-only, the text with its padding masked.
    ``chroma``: the window and hop (``winlen``, ``hop``) of the folder's feature extractor
    (default: the released 2^14 and 2^12)."""
    config, dim = hf_model.config, int(hf_model.config.decoder.hidden_size)
    text = TextConditioner(
        dim,
        name="t5",
        max_length=min(int(getattr(tokenizer, "model_max_length", 512)), 512),
        loaded=(hf_model.text_encoder, tokenizer),
    )
    _load_projection(text.proj, projections.get("text"))
    if config.model_type not in MELODY_TYPES:
        return ConditionProvider(text)
    melody = MelodyConditioner(
        dim,
        sample_rate=int(config.audio_encoder.sampling_rate),
        n_chroma=int(config.num_chroma),
        duration_frames=int(config.chroma_length),
        **(chroma or {}),
    )
    _load_projection(melody.proj, projections.get("melody"))
    return ConditionProvider(text, melody, released_layout=True)


MELODY_TYPES = ("musicgen_melody", "musicgen_melody_decoder")
TEXT_TYPES = ("musicgen", "musicgen_decoder")
DECODER_TYPES = ("musicgen_melody_decoder", "musicgen_decoder")


def _model_class(path: Path, kind: str) -> type:
    """The transformers class of a folder's ``model_type``; a :class:`UserError` for others."""
    import transformers

    names = {
        "musicgen_melody": "MusicgenMelodyForConditionalGeneration",
        "musicgen_melody_decoder": "MusicgenMelodyForCausalLM",
        "musicgen": "MusicgenForConditionalGeneration",
        "musicgen_decoder": "MusicgenForCausalLM",
    }
    if kind not in names:
        raise UserError(
            f"{path} is not a MusicGen model folder (model_type {kind!r}, expected one of "
            f"{list(names)})"
        )
    return getattr(transformers, names[kind])


def load_hf_musicgen(folder: str | Path, device: str = "cpu") -> HFMusicgen:
    """Convert a local ``save_pretrained`` folder of ``MusicgenForConditionalGeneration`` (e.g. a
    download of facebook/musicgen-small or a stereo variant),
    ``MusicgenMelodyForConditionalGeneration`` (facebook/musicgen-melody) or of their decoders
    (``Musicgen(Melody)ForCausalLM``); read with ``from_pretrained(..., local_files_only=True)``,
    never downloaded. A whole model's folder with tokenizer files (as a download has them) also
    gives its ``conditions``."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise UserError(
            f"{path} is not a Hugging Face model folder (no config.json): pass the folder of a "
            "MusicGen download (e.g. facebook/musicgen-small or facebook/musicgen-melody)"
        )
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        model_class = _model_class(path, config.model_type)
        hf_model = model_class.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load MusicGen weights from {path}: {err}") from err
    state = hf_model.state_dict()
    cfg, lm_state = lm_state_from_hf(state, hf_model.config)
    lm = MusicLM(cfg)
    lm.load_state_dict(lm_state)
    projections = condition_projections_from_hf(state)
    chroma_length = getattr(hf_model.config, "chroma_length", None)
    conditions = None
    if config.model_type not in DECODER_TYPES and _has_tokenizer(path):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        chroma = _chroma_settings(path)
        conditions = released_conditions(hf_model, projections, tokenizer, chroma)
        conditions = conditions.to(device).eval()
    return HFMusicgen(lm.to(device).eval(), projections, chroma_length, conditions, hf_model)


def _chroma_settings(path: Path) -> dict | None:
    """``{winlen, hop}`` of the folder's ``MusicgenMelodyFeatureExtractor`` config
    (``preprocessor_config.json``: ``n_fft``, ``hop_length``), None without one."""
    import json

    file = path / "preprocessor_config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {file}: {err}") from None
    if not isinstance(config, dict) or "n_fft" not in config:
        return None
    return {"winlen": int(config["n_fft"]), "hop": int(config.get("hop_length", 4096))}


def _has_tokenizer(path: Path) -> bool:
    """Whether ``path`` holds tokenizer files (a download does; ``save_pretrained`` does not)."""
    return (path / "tokenizer_config.json").is_file()
