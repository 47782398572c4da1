"""Precomputed melody chroma, so training does not run Demucs at every step.

``python -m musicgen.conditioners.chroma_cache --shards "DIR/train-*.tar" --stemmer demucs
--demucs-repo MODELS --out CACHE`` reads every track of the shards whole, converts it to the
model's rate and channels, stems it and writes its chromagram through
:meth:`MelodyConditioner.stemmed_chroma` (the path training uses) as ``CACHE/<stemmer>/<key>.npy``
(float32 ``(frames, n_chroma)``, written without pickle), next to a ``meta.json`` with the
settings. :class:`ChromaCache` then cuts each batch item's chroma at its crop start time
(``batch["start"]``), to the frames its audio length has. Frame ``f`` of a track is centred at
``f * hop`` samples, so a crop is aligned to the nearest hop (within ``hop / 2`` samples).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import posixpath
import re
import sys
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from musicgen.audio import convert_audio, fit_length
from musicgen.conditioners.melody import MelodyConditioner
from musicgen.conditioners.stemmers import STEMS, build_stemmer
from musicgen.errors import UserError

FORMAT = "musicgen-chroma-cache"
VERSION = 1
META_FILE = "meta.json"
AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")


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
                f"musicgen.conditioners.chroma_cache --out {root} (same stemmer and settings)"
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
    ``overwrite``."""
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
        path = folder / f"{key}.npy"
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


def _audio(data: bytes, rate: int, channels: int, what: str) -> tuple[torch.Tensor, int]:
    try:
        wav, native = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile reports corrupt data through several exception types
        raise UserError(f"cannot decode {what}: {err}") from err
    return convert_audio(torch.from_numpy(wav.T.copy()), native, rate, channels), native


def read_shard_tracks(
    shard: str, rate: int, channels: int, with_stems: bool
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """Whole tracks ``(key, wav (C, T), stems (S, C, T) | None)`` of a WebDataset shard, keyed and
    decoded like the training pipeline (the key ends at the member basename's first dot)."""
    wanted = set(AUDIO_EXTENSIONS)
    if with_stems:
        wanted |= {f"{stem}.{ext}" for stem in STEMS for ext in AUDIO_EXTENSIONS}
    try:
        tar = tarfile.open(shard, mode="r|")  # noqa: SIM115 - closed by the with block below
    except (OSError, tarfile.TarError) as err:
        raise UserError(f"cannot read shard {shard}: {err}") from err
    with tar:
        sample: dict[str, bytes] = {}
        key = None
        for member in tar:
            if not member.isfile():
                continue
            directory, base = posixpath.split(member.name)
            stem, _, ext = base.partition(".")
            member_key = posixpath.join(directory, stem) if directory else stem
            if member_key != key:
                if sample:
                    yield _track(key, sample, rate, channels, with_stems)
                key, sample = member_key, {}
            if ext.lower() in wanted:
                fileobj = tar.extractfile(member)
                sample[ext.lower()] = fileobj.read() if fileobj is not None else b""
        if sample:
            yield _track(key, sample, rate, channels, with_stems)


def _track(
    key: str, sample: dict[str, bytes], rate: int, channels: int, with_stems: bool
) -> tuple[str, torch.Tensor, torch.Tensor | None]:
    ext = next((e for e in AUDIO_EXTENSIONS if e in sample), None)
    if ext is None:
        raise UserError(f"sample {key!r} has no audio member (.{'/.'.join(AUDIO_EXTENSIONS)})")
    wav, _ = _audio(sample[ext], rate, channels, f"{key}.{ext}")
    if not with_stems:
        return key, wav, None
    stems = []
    for stem in STEMS:
        name = f"{stem}.{ext}"
        if name not in sample:
            raise UserError(f"sample {key!r} has no .{name} member: the oracle stemmer needs stems")
        stem_wav, _ = _audio(sample[name], rate, channels, f"{key}.{name}")
        stems.append(fit_length(stem_wav, wav.shape[-1]))
    return key, wav, torch.stack(stems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.conditioners.chroma_cache", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--shards", nargs="+", required=True, help="shard paths or glob patterns")
    parser.add_argument("--out", required=True, help="cache root (one folder per stemmer)")
    parser.add_argument("--stemmer", default="demucs", choices=["demucs", "oracle", "none"])
    parser.add_argument("--demucs-name", default="htdemucs")
    parser.add_argument("--demucs-repo", default=None, help="local folder with the Demucs model")
    parser.add_argument("--keep", nargs="+", default=["vocals", "other"], help="stems to keep")
    parser.add_argument("--sample-rate", type=int, default=32000, help="the codec's rate")
    parser.add_argument("--channels", type=int, default=1, help="the codec's channels")
    parser.add_argument("--n-chroma", type=int, default=12)
    parser.add_argument("--winlen", type=int, default=2**14)
    parser.add_argument("--hop", type=int, default=2**12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="recompute existing files")
    args = parser.parse_args(argv)
    try:
        shards = sorted({p for pattern in args.shards for p in glob.glob(pattern)})
        if not shards:
            raise UserError(f"no shard matches {args.shards}: check the paths")
        options: dict = {"keep": args.keep} if args.stemmer != "none" else {}
        if args.stemmer == "demucs":
            options |= {"name": args.demucs_name, "repo": args.demucs_repo}
        melody = MelodyConditioner(
            1,
            args.sample_rate,
            build_stemmer(args.stemmer, **options),
            n_chroma=args.n_chroma,
            winlen=args.winlen,
            hop=args.hop,
        ).to(args.device)
        with_stems = args.stemmer == "oracle"
        tracks = (
            track
            for shard in shards
            for track in read_shard_tracks(shard, args.sample_rate, args.channels, with_stems)
        )
        written, kept = write_cache(tracks, melody, args.out, args.channels, args.overwrite)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    folder = cache_dir(args.out, melody.stemmer.tag)
    print(f"{written} chroma written, {kept} already there, in {folder} ({len(shards)} shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
