"""Precomputed melody chroma, so training does not run Demucs at every step.

:func:`write_cache` (run over prepared shards by ``python -m data.chroma_cache --shards
"DIR/train-*.tar" --stemmer demucs --demucs-repo MODELS --out CACHE``) takes whole tracks at the
model's rate and channels, stems them and writes each chromagram through
:meth:`MelodyConditioner.stemmed_chroma` (the path training uses) as ``CACHE/<stemmer>/<key>.npy``
(float32 ``(frames, n_chroma)``, written without pickle), next to a ``meta.json`` with the
settings. :class:`ChromaCache` then cuts each batch item's chroma at its crop start time
(``batch["start"]``), to the frames its audio length has. Frame ``f`` of a track is centred at
``f * hop`` samples, so a crop is aligned to the nearest hop (within ``hop / 2`` samples).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from musicgen.conditioners.melody import MelodyConditioner
from musicgen.errors import UserError
from musicgen.paths import inside

FORMAT = "musicgen-chroma-cache"
VERSION = 1
META_FILE = "meta.json"


def cache_dir(root: str | Path, stemmer_tag: str) -> Path:
    """The folder of one stemmer's chroma under a cache root."""
    return Path(root) / re.sub(r"[^A-Za-z0-9_+.-]", "_", stemmer_tag)


def cache_settings(melody: MelodyConditioner, channels: int) -> dict:
    """What a cached chroma depends on; the cache is only used when these match."""
    extractor = melody.chroma
    return {
        "format": FORMAT,
        "version": VERSION,
        "stemmer": melody.stemmer.tag,
        "sample_rate": melody.sample_rate,
        "channels": channels,
        "n_chroma": extractor.n_chroma,
        "winlen": extractor.winlen,
        "hop": extractor.hop,
        "argmax": extractor.argmax,
    }


class ChromaCache:
    """Reads the chroma cached for ``melody``'s settings under ``root``.

    ``crop(keys, start, num_samples)`` returns ``(B, F, n_chroma)`` float32 with
    F = ``melody.num_frames(num_samples)``, as :meth:`MelodyConditioner.extract` would give for
    the crop.
    """

    def __init__(self, root: str | Path, melody: MelodyConditioner, channels: int = 1) -> None:
        self.dir = cache_dir(root, melody.stemmer.tag)
        self.melody = melody
        meta_path = self.dir / META_FILE
        if not meta_path.is_file():
            raise UserError(
                f"no chroma cache in {self.dir}: build it with python -m "
                f"data.chroma_cache --out {root} (same stemmer and settings)"
            )
        found = json.loads(meta_path.read_text())
        wanted = cache_settings(melody, channels)
        if found != wanted:
            changed = sorted(k for k in wanted if found.get(k) != wanted[k])
            raise UserError(
                f"the chroma cache in {self.dir} was built with other settings ({', '.join(changed)}): "
                f"rebuild it or point the cache elsewhere"
            )

    def track(self, key: str) -> np.ndarray:
        """The whole track's chroma ``(frames, n_chroma)`` (memory-mapped)."""
        path = self.dir / f"{key}.npy"
        if not path.is_file():
            raise UserError(
                f"no cached chroma for {key!r} in {self.dir}: rebuild the cache for these shards"
            )
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def crop(self, keys: list[str], start: torch.Tensor, num_samples: int) -> torch.Tensor:
        frames = self.melody.chroma.num_frames(num_samples)  # at the chroma hop, as stored
        hop, rate = self.melody.chroma.hop, self.melody.sample_rate
        out = []
        for key, seconds in zip(keys, start.tolist(), strict=True):
            track = self.track(key)
            first = round(seconds * rate / hop)
            part = np.array(track[first : first + frames], dtype=np.float32)
            if part.shape[0] == 0:
                raise UserError(f"cached chroma of {key!r} ends before {seconds:.2f} s: rebuild it")
            if part.shape[0] < frames:  # the crop reaches the track's end: repeat the last frame
                part = np.concatenate([part, np.repeat(part[-1:], frames - part.shape[0], 0)])
            out.append(torch.from_numpy(part))
        return torch.stack(out)


def write_cache(
    tracks: Iterable[tuple[str, torch.Tensor, torch.Tensor | None]],
    melody: MelodyConditioner,
    out: str | Path,
    channels: int = 1,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Write the chroma of ``(key, wav (C, T), stems (S, C, T) | None)`` tracks, at the melody's
    rate and ``channels``; returns (written, already there). Existing files are kept unless
    ``overwrite``. A key whose file would lie outside the stemmer's folder raises UserError."""
    folder = cache_dir(out, melody.stemmer.tag)
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / META_FILE
    settings = cache_settings(melody, channels)
    if meta_path.is_file() and json.loads(meta_path.read_text()) != settings and not overwrite:
        raise UserError(
            f"{folder} holds chroma with other settings: use another --out or --overwrite"
        )
    meta_path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    written = kept = 0
    for key, wav, stems in tracks:
        path = inside(folder, f"{key}.npy")
        if path.is_file() and not overwrite:
            kept += 1
            continue
        device = melody.proj.weight.device
        chroma = melody.stemmed_chroma(
            wav[None].to(device), stems[None].to(device) if stems is not None else None
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, chroma[0].cpu().numpy().astype(np.float32), allow_pickle=False)
        tmp.replace(path)
        written += 1
    return written, kept
