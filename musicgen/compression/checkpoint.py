"""Reading and writing codec weights; nothing here unpickles arbitrary objects.

Our export format is a directory with two files:

* ``config.json``: ``{"format": "musicgen-codec", "version": 1, "config": CodecConfig.to_dict()}``
* ``model.safetensors``: the model's state dict.

We also read a ``train.py`` Lightning checkpoint of ``solver=compression`` (through
:func:`musicgen.checkpoint_io.load_checkpoint`, ``weights_only=True``; the codec config is its ``hyper_parameters["codec"]``, the weights are the
EMA generator's when present) and the official EnCodec ``.th`` state dicts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from musicgen.checkpoint_io import load_checkpoint
from musicgen.compression.config import OFFICIAL, OFFICIAL_FILES, CodecConfig
from musicgen.errors import UserError

FORMAT = "musicgen-codec"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/encodec/v0/"
State = dict[str, torch.Tensor]


def write_codec_dir(directory: str | Path, config: CodecConfig, state: State) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "version": VERSION, "config": config.to_dict()}
    (out / CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / WEIGHTS_FILE))
    return out


def read_codec_dir(directory: str | Path) -> tuple[CodecConfig, State]:
    root = Path(directory)
    if not (root / CONFIG_FILE).is_file() or not (root / WEIGHTS_FILE).is_file():
        raise UserError(
            f"{root} is not a saved codec (needs {CONFIG_FILE} and {WEIGHTS_FILE}): save one with CompressionModel.save"
        )
    try:
        header = json.loads((root / CONFIG_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if (
        not isinstance(header, dict)
        or header.get("format") != FORMAT
        or header.get("version") != VERSION
        or not isinstance(header.get("config"), dict)
    ):
        raise UserError(
            f"{root / CONFIG_FILE} is not a {FORMAT} v{VERSION} config: re-export the model with this version"
        )
    try:
        weights = load_file(str(root / WEIGHTS_FILE))
    except SafetensorError as err:
        raise UserError(
            f"{root / WEIGHTS_FILE} cannot be read ({err}): it is truncated or damaged; save the codec again"
        ) from None
    return CodecConfig.from_dict(header["config"]), weights


def read_lightning_checkpoint(path: str | Path) -> tuple[CodecConfig, State]:
    """Codec config and generator weights (EMA ones when the run kept an EMA) of a train.py .ckpt."""
    ckpt = load_checkpoint(path, "codec checkpoint")
    hparams = ckpt.get("hyper_parameters")
    codec = hparams.get("codec") if isinstance(hparams, dict) else None
    if not isinstance(codec, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(
            f"codec checkpoint {path} is not a checkpoint of solver=compression: pass a .ckpt written by "
            "train.py solver=compression, a folder saved by CompressionModel.save or an official EnCodec .th file"
        )
    weights = ckpt["state_dict"]
    prefix = "ema." if any(k.startswith("ema.") for k in weights) else "model."
    state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    return CodecConfig.from_dict(codec), state


def file_digest(path: str | Path) -> str:
    """sha256 of a file."""
    sha = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def read_official(
    name: str, repository: str | Path, check_hash: bool = True
) -> tuple[CodecConfig, State]:
    """Config and state dict of an official EnCodec model from ``repository/<official file name>``."""
    if name not in OFFICIAL:
        raise UserError(f"unknown pretrained codec {name!r}: pick one of {sorted(OFFICIAL)}")
    path = Path(repository) / OFFICIAL_FILES[name]
    if not path.is_file():
        raise UserError(
            f"{path} does not exist: download {OFFICIAL_URL}{OFFICIAL_FILES[name]} into {repository}"
        )
    expected = path.stem.split("-")[-1]
    if check_hash and not file_digest(path).startswith(expected):
        raise UserError(
            f"{path} does not match its published sha256 prefix {expected}: download it again (or pass check_hash=False for a modified copy)"
        )
    return OFFICIAL[name], load_checkpoint(path, "official EnCodec weights")


def official_name(path: str | Path) -> str | None:
    """The official model name when ``path`` carries an official weights file name."""
    return next((name for name, file in OFFICIAL_FILES.items() if Path(path).name == file), None)
