"""Dataset preparation: each dataset is one module of this package that turns a source into shards.

A preparation module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args)``;
register it in :data:`PREPARERS` and it becomes ``python -m data.prepare <name> ...``.
"""

from __future__ import annotations

PREPARERS: dict[str, str] = {
    "synth": "data.prepare.synth",
    "mtg": "data.prepare.mtg",
    "maestro": "data.prepare.maestro",
    "slakh": "data.prepare.slakh",
    "musiccaps": "data.prepare.musiccaps",
    "musdb": "data.prepare.musdb",
}
