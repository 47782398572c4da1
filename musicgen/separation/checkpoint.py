"""Load a separator: a ``train.py`` checkpoint of ``solver=separation``, a released Spleeter
model (``spleeter:4stems`` or its unpacked folder) or a released Demucs model (``htdemucs``)."""

from __future__ import annotations

from pathlib import Path

from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs
from torch import nn

from musicgen.checkpoint_io import check_solver, first_line, load_lightning_checkpoint
from musicgen.errors import UserError
from musicgen.paths import default_folders
from musicgen.separation import build_separator
from musicgen.separation.htdemucs import HTDemucsBag, HTDemucsSeparator
from musicgen.separation.spleeter_tf import PRESET_NAMES, load_spleeter

SOLVER_PREFIX = "separator."  # the separator's parameters inside solvers.separation
SPLEETER = "spleeter:"


def default_model_dir(kind: str) -> Path:
    """Where released weights are looked for by default: ``<weights_dir>/spleeter`` (holding
    ``2stems/``, ``4stems/``, ...) and ``<weights_dir>/demucs`` (a Demucs repo folder)."""
    return default_folders()["weights_dir"] / kind


def _load_ckpt(path: Path) -> nn.Module:
    fix = "pass a .ckpt of train.py solver=separation"
    state = load_lightning_checkpoint(path, fix=fix)
    check_solver(state, path, ("separation",))
    try:
        config = dict(state["hyper_parameters"]["separator"])
        model = build_separator(config)
        weights = {
            k[len(SOLVER_PREFIX) :]: v
            for k, v in state["state_dict"].items()
            if k.startswith(SOLVER_PREFIX)
        }
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(
            f"{path} is not a separation checkpoint ({first_line(err)}): {fix}"
        ) from None
    return model.eval()


def _load_spleeter(name: str, model_dir: Path | None) -> nn.Module:
    preset = name.removeprefix(SPLEETER)
    if preset not in PRESET_NAMES:
        raise UserError(f"unknown Spleeter model {name!r}: use spleeter:{'|'.join(PRESET_NAMES)}")
    folder = (model_dir or default_model_dir("spleeter")) / preset.removesuffix("-16kHz")
    if not folder.is_dir():
        raise UserError(
            f"the weights of {name} are not in {folder}: unpack the released "
            f"{preset.removesuffix('-16kHz')}.tar.gz there (or pass --model-dir DIR holding "
            f"{preset.removesuffix('-16kHz')}/)"
        )
    return load_spleeter(folder, preset)


def _load_demucs(name: str, model_dir: Path | None) -> nn.Module:
    from musicgen.conditioners.stemmers import _load_from_repo

    repo = model_dir or default_model_dir("demucs")
    if not repo.is_dir():
        raise UserError(
            f"no Demucs folder {repo} for model {name!r}: pass --model-dir DIR holding "
            f"{name}.yaml and its .th files"
        )
    model = _load_from_repo(name, repo)
    bag = model if isinstance(model, BagOfModels) else BagOfModels([model])
    if not all(isinstance(m, HTDemucs) for m in bag.models):
        raise UserError(
            f"Demucs model {name!r} is not made of HTDemucs models: use htdemucs, htdemucs_ft "
            "or htdemucs_6s"
        )
    if len(bag.models) == 1:
        return HTDemucsSeparator.wrap(bag.models[0]).eval()
    try:
        return HTDemucsBag.wrap(bag).eval()
    except ValueError as err:
        raise UserError(f"Demucs bag {name!r} cannot be used: {err}") from None


def load_separator(path: str | Path, model_dir: str | Path | None = None) -> nn.Module:
    """The separator named by ``path`` (in eval mode):

    * a ``.ckpt`` of ``train.py solver=separation`` (config at
      ``hyper_parameters.separator``, weights prefixed ``separator.``);
    * ``spleeter:2stems`` / ``4stems`` / ``5stems`` (``-16kHz`` variants too): the released
      archive unpacked in ``model_dir/<n>stems`` (default ``<weights_dir>/spleeter``), or the
      path of such a folder;
    * any other name: a Demucs model from the repo folder ``model_dir`` (default
      ``<weights_dir>/demucs``) through ``demucs.pretrained.get_model``.
    """
    text = str(path)
    model_dir = Path(model_dir) if model_dir is not None else None
    if text.startswith(SPLEETER):
        return _load_spleeter(text, model_dir)
    file = Path(path)
    if file.is_dir() or file.suffix == ".index":
        return load_spleeter(file)
    if file.suffix in (".ckpt", ".pt", ".pth") or file.is_file() or "/" in text:
        return _load_ckpt(file)
    return _load_demucs(text, model_dir)
