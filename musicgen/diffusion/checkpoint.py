"""Loading a :class:`MultiBandDiffusion`: ``train.py`` checkpoints of ``solver=diffusion`` and
AudioCraft's released MBD files (:mod:`musicgen.diffusion.official`), both read with
``torch.load(weights_only=True)``; every problem is one :class:`UserError` sentence."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from musicgen.checkpoint_io import check_solver, first_line, load_checkpoint
from musicgen.diffusion import official
from musicgen.diffusion.model import MultiBandDiffusion
from musicgen.diffusion.schedule import NoiseSchedule
from musicgen.errors import UserError

PREFIX = "diffusion."  # the model inside solvers.diffusion.DiffusionSolver
EMA_PREFIX = "ema."  # its EMA copy
OFFICIAL_PATTERNS = ("mbd_*.th", "mbd_*.pt")
# Hop of the codec each released package was trained on, by sample rate (AudioCraft's EnCodec
# 24 kHz: 320; MusicGen's 32 kHz codec: 640). The packages do not record it.
OFFICIAL_HOPS = {24000: 320, 32000: 640}
FIX = (
    "pass <run dir>/checkpoints/last.ckpt of train.py solver=diffusion, or a folder or file of "
    "AudioCraft's released MBD weights (mbd_musicgen_32khz.th, mbd_comp_<n_q>.pt)"
)
SCHEDULE_KEYS = set(inspect.signature(NoiseSchedule).parameters)


def save_diffusion(model: MultiBandDiffusion, path: str | Path) -> Path:
    """Write ``model`` as ``load_diffusion`` reads it (the layout of a ``solver=diffusion``
    checkpoint: ``hyper_parameters.diffusion`` and ``diffusion.``-prefixed weights)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"diffusion": model.config}, "state_dict": weights}, path)
    return path


def official_file(folder: Path, n_q: int | None, sample_rate: int | None) -> Path:
    """The released MBD file in ``folder``; among several (a download of the whole
    ``facebook/multiband-diffusion`` repository), the one for a codec of ``sample_rate`` and
    ``n_q`` codebooks: ``mbd_musicgen_32khz.th`` at 32 kHz, else ``mbd_comp_<n_q>.pt``."""
    files = sorted({f for pattern in OFFICIAL_PATTERNS for f in folder.glob(pattern)})
    if len(files) == 1:
        return files[0]
    if not files:
        raise UserError(f"diffusion checkpoint folder {folder} holds no mbd_*.th/.pt file: {FIX}")
    wanted = folder / ("mbd_musicgen_32khz.th" if sample_rate == 32000 else f"mbd_comp_{n_q}.pt")
    if (sample_rate is not None or n_q is not None) and wanted in files:
        return wanted
    names = ", ".join(f.name for f in files)
    raise UserError(
        f"diffusion checkpoint folder {folder} holds several MBD files ({names}) and none fits "
        f"this codec: pass one of them"
    )


def load_diffusion(
    path: str | Path,
    n_q: int | None = None,
    hop_length: int | None = None,
    ema: bool = True,
    sample_rate: int | None = None,
) -> MultiBandDiffusion:
    """The decoder stored at ``path`` (on the CPU, in eval mode).

    ``path``: a ``train.py`` checkpoint of ``solver=diffusion`` (its EMA weights when it has
    them and ``ema``), one of AudioCraft's released MBD files, or a folder holding them
    (``sample_rate`` and ``n_q``, the codec's, pick one among several: see
    :func:`official_file`). ``hop_length`` overrides the codec hop of a released file
    (default: 320 at 24 kHz, 640 at 32 kHz).
    """
    file = Path(path)
    if file.is_dir():
        file = official_file(file, n_q, sample_rate)
    with torch.serialization.safe_globals(official.safe_globals()):
        state = load_checkpoint(file, what="diffusion checkpoint", fix=FIX)
    if "n_bands" in state and "sample_rate" in state:
        model = from_official(state, file, hop_length)
    else:
        model = from_lightning(state, file, ema)
    return model.eval()


def from_lightning(state: dict, path: Path, ema: bool) -> MultiBandDiffusion:
    """The decoder of a ``solver=diffusion`` checkpoint's state."""
    weights = state.get("state_dict")
    if not isinstance(weights, dict) or "hyper_parameters" not in state:
        raise UserError(
            f"diffusion checkpoint {path} is not a checkpoint written by train.py: {FIX}"
        )
    check_solver(state, path, ("diffusion",))
    hparams = state["hyper_parameters"]
    try:
        config = dict(hparams["diffusion"])
        if config.get("n_q") is None and isinstance(hparams.get("n_q"), int):
            config["n_q"] = hparams["n_q"]
        model = MultiBandDiffusion(**config)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"diffusion checkpoint {path} has no usable diffusion config ({first_line(err)}): {FIX}"
        ) from None
    prefix = EMA_PREFIX if ema and any(k.startswith(EMA_PREFIX) for k in weights) else PREFIX
    own = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    load_exactly(model, own, path)
    return model


def from_official(pkg: dict, path: Path, hop_length: int | None) -> MultiBandDiffusion:
    """The decoder of a released MBD package (see :mod:`musicgen.diffusion.official`)."""
    try:
        sample_rate, n_bands = int(pkg["sample_rate"]), int(pkg["n_bands"])
        configs = [official.band_config(pkg, band) for band in range(n_bands)]
        arguments = official_arguments(configs, sample_rate, n_bands, hop_length)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserError(
            f"{path} is not a MultiBand Diffusion package in AudioCraft's layout "
            f"({first_line(err)}): {FIX}"
        ) from None
    extra = official.tensors_outside(pkg, n_bands)
    if extra:
        raise UserError(
            f"{path} holds tensors outside the bands' model_state/processor_state "
            f"({', '.join(extra[:5])}): it is not a released MBD file"
        )
    model = MultiBandDiffusion(**arguments)
    weights = {}
    for band in range(n_bands):
        for part, prefix in (("model_state", "models"), ("processor_state", "processors")):
            weights |= {f"{prefix}.{band}.{k}": v for k, v in dict(pkg[band][part]).items()}
    load_exactly(model, weights, path, own_buffers=("splitter.",))
    return model


def official_arguments(
    configs: list[dict[str, Any]], sample_rate: int, n_bands: int, hop_length: int | None
) -> dict[str, Any]:
    """``MultiBandDiffusion`` arguments of the per-band training configs of a released package."""
    unets, schedules, processors, cutoffs = [], [], [], None
    latent_dims, channels, n_qs = set(), set(), set()
    for band, cfg in enumerate(configs):
        unet = dict(cfg["diffusion_unet"])
        latent_dims.add(unet.pop("codec_dim"))
        unets.append(unet)
        schedules.append({k: v for k, v in cfg["schedule"].items() if k in SCHEDULE_KEYS})
        processors.append({k: v for k, v in cfg["processor"].items()})
        channels.add(int(cfg["channels"]))
        n_qs.add(cfg.get("n_q"))
        if cfg.get("resampling", {}).get("use"):
            raise ValueError(f"band {band} was trained on resampled audio, which is not supported")
        band_filter = cfg.get("filter", {})
        if band_filter.get("use"):
            if band_filter["n_bands"] != n_bands or band_filter["idx_band"] != band:
                raise ValueError(
                    f"band {band} was trained on band {band_filter['idx_band']} of "
                    f"{band_filter['n_bands']}"
                )
            cutoffs = band_filter.get("cutoffs")
        elif n_bands != 1:
            raise ValueError(f"band {band} of {n_bands} was trained on unfiltered audio")
    if len(latent_dims) != 1 or None in latent_dims:
        raise ValueError(f"the bands' codec_dim differ or are unset ({latent_dims})")
    if len(channels) != 1 or len(n_qs) != 1:
        raise ValueError("the bands were trained for different codecs")
    hop = hop_length or OFFICIAL_HOPS.get(sample_rate)
    if hop is None:
        raise ValueError(f"no known codec hop at {sample_rate} Hz: pass hop_length")
    return {
        "sample_rate": sample_rate,
        "n_bands": n_bands,
        "latent_dim": int(latent_dims.pop()),
        "hop_length": hop,
        "unet": unets,
        "schedule": schedules,
        "processor": processors,
        "channels": channels.pop(),
        "n_q": n_qs.pop(),
        "cutoffs": cutoffs,
    }


def load_exactly(
    model: torch.nn.Module, weights: dict, path: Path, own_buffers: tuple[str, ...] = ()
) -> None:
    """Load ``weights`` into ``model``; a UserError names any missing or unused key (keys under
    ``own_buffers`` may be absent: the model computes them)."""
    own = model.state_dict()
    expected = {k for k in own if not k.startswith(own_buffers)}
    problems = {
        "missing": sorted(expected - weights.keys()),
        "unused": sorted(weights.keys() - own.keys()),
        "wrong shape": sorted(
            f"{k} {tuple(getattr(v, 'shape', ()))} (expected {tuple(own[k].shape)})"
            for k, v in weights.items()
            if k in own and getattr(v, "shape", None) != own[k].shape
        ),
    }
    if any(problems.values()):
        parts = [
            f"{kind} {', '.join(keys[:5])}" + (" ..." if len(keys) > 5 else "")
            for kind, keys in problems.items()
            if keys
        ]
        raise UserError(
            f"the weights in {path} do not fit the diffusion model its config describes "
            f"({'; '.join(parts)})"
        )
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise UserError(
            f"the weights in {path} do not fit the diffusion model its config describes "
            f"({first_line(err)})"
        ) from None
