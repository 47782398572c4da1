"""AudioCraft's released MultiBand Diffusion weights (``facebook/multiband-diffusion``).

A file (``mbd_musicgen_32khz.th`` for MusicGen's 32 kHz codec, ``mbd_comp_{2,4,8}.pt`` for
EnCodec 24 kHz at 1.5/3/6 kbps) is a ``torch.save``d dict, as AudioCraft's
``loaders.load_diffusion_models`` reads it: ``sample_rate``, ``n_bands`` and, for each band
``i`` (an int key), ``{"cfg": <the training run's OmegaConf config>, "model_state": <its
DiffusionUnet state dict>, "processor_state": <its sample processor's state dict>}``.

The OmegaConf objects are unpickled by ``torch.load(weights_only=True)`` into inert stand-ins
(:class:`PickledNode`: only their ``__dict__`` is kept, no OmegaConf code runs) and turned into
plain dicts by :func:`plain`; ``${a.b}`` interpolations are resolved against the run's config.
"""

from __future__ import annotations

import collections
import re
import typing
from typing import Any

import torch

# omegaconf classes a pickled config holds (omegaconf 2.0-2.3): containers and value nodes.
OMEGACONF_CLASSES = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.InterpolationResultNode",
)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


class PickledNode:
    """Inert stand-in for an OmegaConf object: its pickled ``__dict__`` is kept as ``state``."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def safe_globals() -> list:
    """What ``torch.serialization.safe_globals`` needs to read a pickled OmegaConf config."""
    return [
        *((PickledNode, name) for name in OMEGACONF_CLASSES),
        (typing.Any, "typing.Any"),
        dict,  # node types (object_type) and plain values the nodes rebuild
        list,
        int,
        float,
        str,
        bool,
        (collections.defaultdict, "collections.defaultdict"),
    ]


def plain(value: Any) -> Any:
    """``value`` with every pickled OmegaConf container or node replaced by its plain value
    (dicts, lists, scalars), interpolations unresolved."""
    if isinstance(value, PickledNode):
        state = value.state if isinstance(value.state, dict) else {}
        if "_content" in state:
            return plain(state["_content"])
        if "_val" in state:
            return plain(state["_val"])
        raise ValueError("a pickled OmegaConf object without content")
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def resolve(value: Any, root: dict, depth: int = 0) -> Any:
    """``value`` with each string that is exactly ``${a.b}`` replaced by ``root['a']['b']``
    (left as it is when the path does not exist)."""
    if depth > 20:
        raise ValueError("interpolation cycle in the checkpoint's config")
    if isinstance(value, dict):
        return {key: resolve(item, root, depth) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, root, depth) for item in value]
    match = INTERPOLATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return value
    node: Any = root
    for part in match.group(1).split("."):
        if not isinstance(node, dict) or part not in node:
            return value
        node = node[part]
    return resolve(node, root, depth + 1)


def band_config(pkg: dict, band: int) -> dict:
    """The plain, resolved training config of ``band`` in a released package."""
    config = plain(pkg[band]["cfg"])
    if not isinstance(config, dict):
        raise ValueError(f"band {band}'s cfg is not a config")
    return resolve(config, config)


def tensors_outside(pkg: dict, n_bands: int) -> list[str]:
    """Names of tensors in ``pkg`` that are not a band's ``model_state``/``processor_state``."""
    found = []

    def walk(value: Any, name: str) -> None:
        if isinstance(value, torch.Tensor):
            found.append(name)
        elif isinstance(value, dict):
            for key, item in value.items():
                if not (name == "" and key in range(n_bands)):
                    walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{name}.{i}")

    walk(pkg, "")
    for band in range(n_bands):
        entry = pkg[band]
        for key, item in entry.items():
            if key not in ("model_state", "processor_state"):
                walk(item, f"{band}.{key}")
    return found
