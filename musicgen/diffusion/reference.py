"""AudioCraft's own diffusion code, loaded file by file, for differential tests and benchmarks.

The ``audiocraft`` package cannot be imported here (its ``__init__`` needs xformers, av and
more), so its ``models/unet.py`` and ``modules/diffusion_schedule.py`` are loaded from an
installed copy (``pip install --no-deps audiocraft==1.3.0``) or a checkout named by
``AUDIOCRAFT_SOURCE``; the transformer import of ``unet.py`` (only used by its
``transformer=True`` bottleneck) gets a stand-in module.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

SKIP_REASON = (
    "AudioCraft's source is not available: pip install --no-deps audiocraft==1.3.0 "
    "or set AUDIOCRAFT_SOURCE to a checkout"
)


def audiocraft_dir() -> Path | None:
    """The ``audiocraft`` package folder, or None."""
    if os.environ.get("AUDIOCRAFT_SOURCE"):
        folder = Path(os.environ["AUDIOCRAFT_SOURCE"]) / "audiocraft"
        return folder if folder.is_dir() else None
    spec = importlib.util.find_spec("audiocraft")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """AudioCraft's ``unet`` and ``diffusion_schedule`` modules."""
    folder = audiocraft_dir()
    assert folder is not None, SKIP_REASON
    stand_in = types.ModuleType("audiocraft.modules.transformer")
    stand_in.StreamingTransformer = stand_in.create_sin_embedding = None
    names = ("audiocraft", "audiocraft.modules", "audiocraft.modules.transformer")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(
        {
            "audiocraft": types.ModuleType("audiocraft"),
            "audiocraft.modules": types.ModuleType("audiocraft.modules"),
            "audiocraft.modules.transformer": stand_in,
        }
    )
    try:
        unet = _load(folder / "models" / "unet.py", "_audiocraft_unet")
        schedule = _load(folder / "modules" / "diffusion_schedule.py", "_audiocraft_schedule")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return unet, schedule
