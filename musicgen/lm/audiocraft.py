"""Official MusicGen weights in AudioCraft's own layout -> :class:`MusicLM` and condition settings.

AudioCraft's release folders (``facebook/musicgen-small`` ... as AudioCraft downloads them) hold
``state_dict.bin``: ``{"xp.cfg": <the training config, YAML>, "best_state": <LMModel state
dict>, ...}``. AudioCraft rebuilds the model from that config (``builders.get_lm_model``); we
read the same fields: ``transformer_lm`` (sizes, biases, norm placement), ``codebooks_pattern``
(the delays), ``fuser`` (text through cross-attention, or melody and text prepended) and
``conditioners`` (the T5 name, the chroma settings). Settings our LM does not implement (another
positional embedding, layer scale, QK norms, grouped keys and values, other fusers) are refused
by name rather than converted wrongly.

Parameter names: ``emb.k`` stack into our ``emb``, ``linears.k`` into ``heads``,
``transformer.layers.i.*`` are our ``layers.i.*`` with the packed ``in_proj_weight`` (``.mha.``
when AudioCraft used ``nn.MultiheadAttention``) as ``in_proj.weight``; the conditioners'
``output_proj`` are the condition projections.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from musicgen.errors import UserError
from musicgen.lm.config import LMConfig
from musicgen.lm.model import MusicLM

LM_FILE = "state_dict.bin"
CONDITIONERS = "condition_provider.conditioners."
CONDITION_NAMES = {"description": "text", "self_wav": "melody"}
CHROMA_WINDOW = CONDITIONERS + "self_wav.chroma.spec.window"  # the chroma STFT's saved buffer
T5_DIMS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024}


@dataclass
class AudioCraftLM:
    """What :func:`load_audiocraft_lm` reads: the converted ``lm``; ``text`` (``name`` of the T5
    model) and ``melody`` (:class:`~musicgen.conditioners.MelodyConditioner` arguments) settings,
    None when the model has no such condition; the conditioners' ``projections``
    (``nn.Linear`` state dicts by ``text``/``melody``); the training segment and the full
    resolved config ``cfg``."""

    lm: MusicLM
    text: dict | None
    melody: dict | None
    projections: dict[str, dict[str, torch.Tensor]]
    segment_seconds: float
    cfg: dict


def read_package(path: Path, what: str) -> dict:
    """An AudioCraft ``.bin`` package (read with ``weights_only=True``) and its resolved
    ``xp.cfg``; a :class:`UserError` naming ``path`` when it is missing or not one."""
    if not path.is_file():
        raise UserError(f"{path} is missing: an AudioCraft MusicGen folder holds the {what} there")
    try:
        package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged or foreign file
        raise UserError(f"cannot read {path} ({type(err).__name__}): {str(err)[:120]}") from None
    if not isinstance(package, dict):
        raise UserError(f"{path} is not an AudioCraft package (a dict with 'xp.cfg')")
    if "pretrained" in package:
        return package
    if "xp.cfg" not in package or "best_state" not in package:
        raise UserError(
            f"{path} is not an AudioCraft package: it has no 'xp.cfg' and 'best_state' "
            f"(keys {sorted(map(str, package))[:6]})"
        )
    package["xp.cfg"] = resolve_config(package["xp.cfg"], path)
    return package


def resolve_config(config: Any, path: Path) -> dict:
    """The saved config (YAML text or a mapping) as plain containers, interpolations resolved."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.create(config)
        return OmegaConf.to_container(node, resolve=True)
    except (OmegaConfBaseException, ValueError, TypeError) as err:
        raise UserError(f"the xp.cfg in {path} is not a readable config: {err}") from None


def _require(cfg: dict, where: str, name: str, allowed: tuple, default: Any = None) -> Any:
    value = cfg.get(name, default)
    if value not in allowed:
        raise UserError(
            f"{where}.{name} = {value!r} is not supported by our MusicGen LM (supported: "
            f"{list(allowed)})"
        )
    return value


def lm_config_from_audiocraft(cfg: dict) -> LMConfig:
    """:class:`LMConfig` of the ``LMModel`` AudioCraft builds from the resolved ``cfg``."""
    if cfg.get("lm_model") != "transformer_lm":
        raise UserError(f"lm_model {cfg.get('lm_model')!r} is not MusicGen's transformer_lm")
    lm = dict(cfg["transformer_lm"])
    where = "transformer_lm"
    _require(lm, where, "activation", ("gelu",), "gelu")
    _require(lm, where, "norm", ("layer_norm",), "layer_norm")
    _require(lm, where, "positional_embedding", ("sin",), "sin")
    _require(lm, where, "positional_scale", (1.0,), 1.0)
    _require(lm, where, "layer_scale", (None,))
    _require(lm, where, "qk_layer_norm", (False,), False)
    _require(lm, where, "qk_layer_norm_cross", (False,), False)
    _require(lm, where, "kv_repeat", (1,), 1)
    _require(lm, where, "past_context", (None,))
    _require(lm, where, "causal", (True,), True)
    biases = {lm.get(name, True) for name in ("bias_ff", "bias_attn", "bias_proj")}
    if len(biases) != 1:
        raise UserError(
            "transformer_lm.bias_ff, bias_attn and bias_proj differ; our LM has one bias switch"
        )
    fuser = cfg.get("fuser", {})
    for op in ("sum", "input_interpolate"):
        if fuser.get(op):
            raise UserError(f"fuser.{op} = {fuser[op]} is not supported (only prepend and cross)")
    _require(fuser, "fuser", "cross_attention_pos_emb", (False,), False)
    n_q = int(lm["n_q"])
    return LMConfig(
        n_q=n_q,
        card=int(lm["card"]),
        dim=int(lm["dim"]),
        num_heads=int(lm["num_heads"]),
        num_layers=int(lm["num_layers"]),
        ffn_dim=int(lm.get("hidden_scale", 4) * int(lm["dim"])),
        dropout=float(lm.get("dropout", 0.0)),
        max_period=float(lm.get("max_period", 10000.0)),
        norm_first=bool(lm.get("norm_first", False)),
        bias=biases.pop(),
        delays=_delays(cfg, n_q),
        cross_attention=bool(fuser.get("cross")),
    )


def _delays(cfg: dict, n_q: int) -> list[int] | None:
    pattern = cfg.get("codebooks_pattern", {})
    _require(pattern, "codebooks_pattern", "modeling", ("delay",))
    delay = pattern.get("delay") or {}
    _require(delay, "codebooks_pattern.delay", "flatten_first", (0,), 0)
    _require(delay, "codebooks_pattern.delay", "empty_initial", (0,), 0)
    delays = delay.get("delays")
    return None if delays is None or list(delays) == list(range(n_q)) else list(delays)


def condition_settings(cfg: dict) -> tuple[dict | None, dict | None]:
    """``(text, melody)``: the T5 ``name`` and the chroma settings of the saved conditioners,
    checked against the fuser (text through cross-attention, or melody and text prepended:
    the layouts MusicGen was released with)."""
    conditioners = dict(cfg.get("conditioners") or {})
    conditioners.pop("args", None)
    unknown = set(conditioners) - set(CONDITION_NAMES)
    if unknown:
        raise UserError(
            f"conditioners {sorted(unknown)} are not supported (only description and self_wav)"
        )
    fuser = cfg.get("fuser", {})
    cross, prepend = list(fuser.get("cross") or []), list(fuser.get("prepend") or [])
    if sorted(cross + prepend) != sorted(conditioners) or (cross and prepend):
        raise UserError(
            f"fuser cross={cross} prepend={prepend} for conditioners {sorted(conditioners)}: only "
            "text through cross-attention or all conditions prepended are supported"
        )
    text = melody = None
    if "description" in conditioners:
        spec = conditioners["description"]
        if spec.get("model") != "t5":
            raise UserError(f"the text conditioner is {spec.get('model')!r}, only t5 is supported")
        name = spec["t5"]["name"]
        if name not in T5_DIMS:
            raise UserError(f"T5 model {name!r} is not one AudioCraft knows ({list(T5_DIMS)})")
        text = {"name": name, "encoder_dim": T5_DIMS[name]}
    if "self_wav" in conditioners:
        spec = conditioners["self_wav"]
        if spec.get("model") != "chroma_stem":
            raise UserError(f"the melody conditioner is {spec.get('model')!r}, only chroma_stem")
        chroma = spec["chroma_stem"]
        _require(chroma, "conditioners.self_wav.chroma_stem", "argmax", (True,), False)
        winlen = int(chroma.get("winlen") or 2 ** int(chroma["radix2_exp"]))
        if int(chroma.get("nfft") or winlen) != winlen:
            raise UserError("conditioners.self_wav.chroma_stem.nfft differs from its winlen")
        melody = {
            "n_chroma": int(chroma["n_chroma"]),
            "winlen": winlen,
            "hop": int(chroma.get("winhop") or winlen // 4),
            "sample_rate": int(chroma["sample_rate"]),
            # True: the chroma is looped or cropped to a training segment's frames
            "match_len_on_eval": bool(chroma.get("match_len_on_eval", True)),
        }
    return text, melody


def _check_window(window: torch.Tensor) -> None:
    """The chroma's saved STFT window must be the Hann window our chroma uses."""
    if not torch.allclose(window.float(), torch.hann_window(len(window)), atol=1e-6):
        raise ValueError(f"{CHROMA_WINDOW} is not a Hann window; our chroma uses one")


def lm_state_from_audiocraft(
    best_state: dict[str, torch.Tensor], cfg: LMConfig
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """``(MusicLM state dict, projections)`` of an AudioCraft ``LMModel`` state dict; every
    tensor is used once (a missing or an extra one is a ``ValueError`` naming it)."""
    state: dict[str, torch.Tensor] = {}
    projections: dict[str, dict[str, torch.Tensor]] = {}
    emb: dict[int, torch.Tensor] = {}
    heads: dict[str, dict[int, torch.Tensor]] = {"weight": {}, "bias": {}}
    for key, tensor in best_state.items():
        if key == CHROMA_WINDOW:
            _check_window(tensor)
        elif key.startswith(CONDITIONERS):
            name, _, rest = key[len(CONDITIONERS) :].partition(".output_proj.")
            if name not in CONDITION_NAMES or not rest:
                raise ValueError(f"AudioCraft conditioner tensor with no counterpart: {key}")
            projections.setdefault(CONDITION_NAMES[name], {})[rest] = tensor
        elif key.startswith("emb.") and key.endswith(".weight"):
            emb[int(key.split(".")[1])] = tensor
        elif key.startswith("linears."):
            _, index, param = key.split(".")
            heads[param][int(index)] = tensor
        elif key.startswith("transformer.layers."):
            ours = key[len("transformer.") :].replace(".mha.", ".")
            state[
                ours.replace("in_proj_weight", "in_proj.weight").replace(
                    "in_proj_bias", "in_proj.bias"
                )
            ] = tensor
        elif key.startswith("out_norm."):
            state[key] = tensor
        else:
            raise ValueError(f"AudioCraft LM tensor with no counterpart in MusicLM: {key}")
    if sorted(emb) != list(range(cfg.n_q)) or sorted(heads["weight"]) != list(range(cfg.n_q)):
        raise ValueError(f"the AudioCraft LM needs {cfg.n_q} embeddings and output linears")
    state["emb"] = torch.stack([emb[k] for k in range(cfg.n_q)])
    for param, parts in heads.items():
        if parts:
            state[f"heads.{param}"] = torch.cat([parts[k] for k in range(cfg.n_q)])
    return state, projections


def load_audiocraft_lm(folder: str | Path, device: str = "cpu") -> AudioCraftLM:
    """Convert the ``state_dict.bin`` of an AudioCraft MusicGen folder (see the module
    docstring); every tensor must fit the model its config describes."""
    path = Path(folder) / LM_FILE
    package = read_package(path, "language model")
    if "pretrained" in package:
        raise UserError(f"{path} refers to {package['pretrained']!r} instead of holding an LM")
    cfg = package["xp.cfg"]
    try:
        lm_cfg = lm_config_from_audiocraft(cfg)
        text, melody = condition_settings(cfg)
        state, projections = lm_state_from_audiocraft(package["best_state"], lm_cfg)
        lm = MusicLM(lm_cfg)
        lm.load_state_dict(state)
    except (KeyError, TypeError) as err:
        raise UserError(f"the xp.cfg in {path} lacks a MusicGen LM setting ({err})") from None
    except (ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"the weights in {path} do not fit its config ({first[:200]})") from None
    return AudioCraftLM(
        lm.to(device).eval(),
        text,
        melody,
        projections,
        float(cfg.get("dataset", {}).get("segment_duration", 30.0)),
        cfg,
    )
