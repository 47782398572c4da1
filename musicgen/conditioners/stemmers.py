"""Stemmers: what of a mix the melody condition sees (MusicGen-Melody keeps vocals + other).

Every stemmer maps ``(wav (B, C, T), sample_rate, stems (B, S, C, T) | None)`` to a waveform of
the input's shape: ``demucs`` separates the mix with a Demucs model, ``separation`` with any
separator :func:`musicgen.separation.checkpoint.load_separator` loads (a ``solver=separation``
checkpoint, a released Spleeter or Demucs model), ``oracle`` sums the dataset's own stems
(``stems`` in :data:`STEMS` order), ``none`` returns the mix. Stemmers are plain callables, not
modules, so a separator never ends up in a checkpoint of the model using it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import torch
import torchaudio.functional as AF

from musicgen.errors import UserError

STEMS = ("drums", "bass", "other", "vocals")  # data.shards.STEMS, the order of batch["stems"]
MELODY_STEMS = ("vocals", "other")


class Stemmer(Protocol):
    tag: str  # names what the stemmer keeps, e.g. "demucs-htdemucs-vocals+other"

    def __call__(
        self, wav: torch.Tensor, sample_rate: int, stems: torch.Tensor | None = None
    ) -> torch.Tensor: ...


def _convert(wav: torch.Tensor, from_rate: int, to_rate: int, channels: int) -> torch.Tensor:
    """Batched ``(B, C, T)`` channel (mean / repeat) and sample-rate conversion."""
    if wav.shape[1] != channels:
        if channels == 1:
            wav = wav.mean(dim=1, keepdim=True)
        elif wav.shape[1] == 1:
            wav = wav.expand(-1, channels, -1).contiguous()
        else:
            raise ValueError(f"cannot convert {wav.shape[1]}-channel audio to {channels} channels")
    return AF.resample(wav, from_rate, to_rate) if from_rate != to_rate else wav


def _indices(keep: tuple[str, ...], sources: list[str] | tuple[str, ...], what: str) -> list[int]:
    unknown = [name for name in keep if name not in sources]
    if unknown or not keep:
        raise UserError(f"cannot keep stems {list(keep)} of {what}: choose from {list(sources)}")
    return [sources.index(name) for name in keep]


def _check_wav(wav: torch.Tensor) -> None:
    if wav.dim() != 3:
        raise ValueError(f"expected audio (B, C, T), got {tuple(wav.shape)}")


class NoStemmer:
    """The full mix."""

    tag = "none"

    def __call__(
        self, wav: torch.Tensor, sample_rate: int, stems: torch.Tensor | None = None
    ) -> torch.Tensor:
        _check_wav(wav)
        return wav


class OracleStemmer:
    """The sum of the dataset's own ``keep`` stems (``stems (B, S, C, T)`` in :data:`STEMS` order)."""

    def __init__(self, keep: tuple[str, ...] | list[str] = MELODY_STEMS) -> None:
        self.keep = tuple(keep)
        self.indices = _indices(self.keep, STEMS, "the dataset")
        self.tag = "oracle-" + "+".join(self.keep)

    def __call__(
        self, wav: torch.Tensor, sample_rate: int, stems: torch.Tensor | None = None
    ) -> torch.Tensor:
        _check_wav(wav)
        if stems is None:
            raise UserError(
                "the oracle stemmer needs the dataset's stems: add stems to solver.data.fields "
                "(or use the demucs or none stemmer: solver.module.melody.stemmer=demucs)"
            )
        if stems.dim() != 4 or stems.shape[1] != len(STEMS) or stems.shape[0] != wav.shape[0]:
            raise ValueError(f"expected stems (B, {len(STEMS)}, C, T), got {tuple(stems.shape)}")
        return stems[:, self.indices].sum(dim=1)


class DemucsStemmer:
    """The ``keep`` sources of a Demucs separation of the mix.

    ``name`` is a bag of models (``htdemucs``) or a single-model signature, loaded from the folder
    ``repo`` with ``demucs.pretrained.get_model`` (``<name>.yaml`` and/or ``<sig>[-<sum>].th``),
    or without ``repo`` from the local Hugging Face cache (``cache_dir``: its default). The mix
    is converted to the model's rate and channels, separated, and the kept sources are summed
    and converted back. ``shifts`` random time shifts are averaged (Demucs' default 1; 0 is
    deterministic).
    """

    def __init__(
        self,
        name: str = "htdemucs",
        repo: str | Path | None = None,
        keep: tuple[str, ...] | list[str] = MELODY_STEMS,
        shifts: int = 1,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.name, self.keep, self.shifts = name, tuple(keep), shifts
        self.model = _load_demucs(name, repo, cache_dir)
        self.indices = _indices(self.keep, list(self.model.sources), f"Demucs model {name!r}")
        self.tag = f"demucs-{name}-" + "+".join(self.keep)

    @property
    def sample_rate(self) -> int:
        return int(self.model.samplerate)

    @torch.no_grad()
    def __call__(
        self, wav: torch.Tensor, sample_rate: int, stems: torch.Tensor | None = None
    ) -> torch.Tensor:
        from demucs.apply import apply_model

        _check_wav(wav)
        self.model.to(wav.device)
        mix = _convert(wav.float(), sample_rate, self.sample_rate, self.model.audio_channels)
        with torch.autocast(wav.device.type, enabled=False):
            sources = apply_model(self.model, mix, shifts=self.shifts, split=True, progress=False)
        kept = sources[:, self.indices].sum(dim=1)
        out = _convert(kept, self.sample_rate, sample_rate, wav.shape[1])
        length = wav.shape[-1]
        if out.shape[-1] < length:
            out = torch.nn.functional.pad(out, (0, length - out.shape[-1]))
        return out[..., :length].to(wav.dtype)


def _load_demucs(
    name: str, repo: str | Path | None, cache_dir: str | Path | None
) -> torch.nn.Module:
    model = (
        _load_from_repo(name, Path(repo))
        if repo is not None
        else _load_from_hf_cache(name, cache_dir)
    )
    return model.eval()


def _load_from_repo(name: str, root: Path) -> torch.nn.Module:
    """``demucs.pretrained.get_model`` on a local folder (``<name>.yaml``, ``<sig>[-<sum>].th``)."""
    from demucs.pretrained import get_model

    if not root.is_dir():
        raise UserError(f"Demucs repo {root} is not a folder: pass the folder holding {name}")
    found = (root / f"{name}.yaml").is_file() or any(
        p.stem.rsplit("-", 1)[0] == name or p.stem == name for p in root.glob("*.th")
    )
    if not found:
        raise UserError(
            f"Demucs model {name!r} is not in {root}: put {name}.yaml and its .th files there"
        )
    try:
        return get_model(name, repo=root)
    except Exception as err:  # demucs reports bad files in many ways
        raise UserError(f"cannot load Demucs model {name!r} from {root}: {err}") from err


def _load_from_hf_cache(name: str, cache_dir: str | Path | None) -> torch.nn.Module:
    """A bag of models from the local Hugging Face cache, where demucs 4.1 downloads its models
    (``<namespace>/<HF repo>/{<name>.yaml, <sig>.safetensors}``); never goes online."""
    import yaml
    from demucs.apply import BagOfModels
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name, load_safetensors_model
    from huggingface_hub import try_to_load_from_cache

    bare = name.removeprefix("hf://")
    namespace, short = bare.split("/", 1) if "/" in bare else (DEFAULT_NAMESPACE, bare)
    repo_id = f"{namespace}/{hf_repo_name(short)}"

    def cached(filename: str) -> str:
        path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if not isinstance(path, str):
            raise UserError(
                f"Demucs model {name!r} is not in the local Hugging Face cache ({repo_id}/{filename} "
                f"missing): give a local Demucs folder with {short}.yaml and its .th files "
                "(train.py: solver.module.melody.stemmers.demucs.repo=DIR)"
            )
        return path

    with open(cached(f"{short}.yaml")) as file:
        bag = yaml.safe_load(file)
    try:
        models = [load_safetensors_model(cached(f"{sig}.safetensors")) for sig in bag["models"]]
    except UserError:
        raise
    except Exception as err:  # bad metadata, wrong shapes
        raise UserError(
            f"cannot load Demucs model {name!r} from the Hugging Face cache: {err}"
        ) from err
    return BagOfModels(models, bag.get("weights"), bag.get("segment"))


class SeparationStemmer:
    """The ``keep`` stems of any separator: ``checkpoint`` is what
    :func:`musicgen.separation.checkpoint.load_separator` takes (a ``.ckpt`` of ``train.py
    solver=separation``, ``spleeter:4stems`` or a Demucs model name, those two from ``model_dir``).
    The mix is separated with overlapping windows (:func:`musicgen.separation.apply.separate`,
    ``overlap``) at the separator's rate and channels, and the kept stems' sum comes back at the
    input's rate, channels and length."""

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        keep: tuple[str, ...] | list[str] = MELODY_STEMS,
        model_dir: str | Path | None = None,
        overlap: float = 0.25,
    ) -> None:
        from musicgen.separation.checkpoint import load_separator

        if not checkpoint:
            raise UserError(
                "the separation stemmer needs a separator: set "
                "solver.module.melody.stemmers.separation.checkpoint=<.ckpt of solver=separation, "
                "spleeter:4stems or a Demucs model name>"
            )
        self.keep, self.overlap = tuple(keep), overlap
        self.model = load_separator(checkpoint, model_dir)
        self.indices = _indices(self.keep, list(self.model.stems), f"separator {checkpoint}")
        digest = hashlib.sha1(str(checkpoint).encode()).hexdigest()[:8]
        self.tag = f"separation-{Path(str(checkpoint)).stem}-{digest}-" + "+".join(self.keep)

    @torch.no_grad()
    def __call__(
        self, wav: torch.Tensor, sample_rate: int, stems: torch.Tensor | None = None
    ) -> torch.Tensor:
        from musicgen.separation.apply import separate

        _check_wav(wav)
        self.model.to(wav.device)
        with torch.autocast(wav.device.type, enabled=False):
            sources = separate(self.model, wav.float(), sample_rate, overlap=self.overlap)
        return sources[:, self.indices].sum(dim=1).to(wav.dtype)


STEMMERS = {
    "demucs": DemucsStemmer,
    "separation": SeparationStemmer,
    "oracle": OracleStemmer,
    "none": NoStemmer,
}


def build_stemmer(kind: str = "none", **kwargs) -> Stemmer:
    """A stemmer by kind: ``demucs`` (name, repo, keep, shifts, cache_dir), ``separation``
    (checkpoint, keep, model_dir, overlap), ``oracle`` (keep) or ``none``."""
    if kind not in STEMMERS:
        raise UserError(f"unknown stemmer {kind!r}: choose one of {sorted(STEMMERS)}")
    try:
        return STEMMERS[kind](**kwargs)
    except TypeError as err:
        raise UserError(f"bad options {sorted(kwargs)} for the {kind} stemmer: {err}") from err
