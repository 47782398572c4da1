"""MUSDB18 and MUSDB18-HQ: turn a local copy into shards, one sample per track (mix + 4 stems).

Expected layouts (the releases unpacked)::

    MUSDB18      ROOT/{train,test}/<Artist - Title>.stem.mp4   five AAC streams: mixture, drums,
                                                               bass, other, vocals (44.1 kHz stereo)
    MUSDB18-HQ   ROOT/{train,test}/<Artist - Title>/{mixture,drums,bass,other,vocals}.wav

The format is detected from the files (``--format`` forces one). ``.stem.mp4`` streams are decoded
with ffmpeg, each cut to the shortest stream's duration (AAC frames pad the end). Splits: the
official ones of the ``musdb`` package (``musdb/configs/mus.yaml``): the 14 ``validation_tracks``
of ``train/`` become ``valid``, the other 86 ``train``, the 50 tracks of ``test/`` ``test``. The
mixture and the stems are written as 16-bit FLAC at 44.1 kHz (``<key>.flac``,
``<key>.<stem>.flac``, stems in :data:`data.shards.STEMS` order); the mixture is the release's own
(for MUSDB18-HQ it equals the sum of the stems). Keys are the track names with every run of other
characters than letters, digits, ``_`` and ``-`` replaced by ``_``; the name itself is in the
``.json`` member (``track``).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from data.shards import STEMS, ShardWriter, check_key, sharding

HELP = "MUSDB18 / MUSDB18-HQ: shard a local copy (official train/valid/test, mix + 4 stems)."
log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
FORMATS = ("auto", "stems", "wav")
STEM_STREAMS = {"mixture": 0, "drums": 1, "bass": 2, "other": 3, "vocals": 4}  # musdb stem_ids
# musdb 0.4.3, musdb/configs/mus.yaml ``validation_tracks`` (the ``subsets="train",
# split="valid"`` tracks of musdb.DB)
VALIDATION_TRACKS = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)


def track_key(name: str) -> str:
    """``Johnny Lokke - Promises & Lies`` -> ``Johnny_Lokke_-_Promises_Lies``."""
    return check_key(re.sub(r"[^A-Za-z0-9_\-]+", "_", name).strip("_") or "track")


def detect_format(root: Path) -> str:
    """``stems`` (``.stem.mp4`` files) or ``wav`` (track folders), from ``root/train``."""
    folder = root / "train"
    if any(folder.glob("*.stem.mp4")):
        return "stems"
    if any((p / "mixture.wav").is_file() for p in folder.iterdir() if p.is_dir()):
        return "wav"
    raise FileNotFoundError(
        f"{folder} holds neither .stem.mp4 files (MUSDB18) nor track folders with mixture.wav "
        "(MUSDB18-HQ): pass --root the folder holding train/ and test/"
    )


def list_tracks(folder: Path, fmt: str) -> dict[str, Path]:
    """Track name -> its ``.stem.mp4`` file or its folder, sorted by name."""
    if fmt == "stems":
        found = {p.name.removesuffix(".stem.mp4"): p for p in folder.glob("*.stem.mp4")}
    else:
        found = {p.name: p for p in folder.iterdir() if p.is_dir()}
    return dict(sorted(found.items()))


def _ffprobe_durations(path: Path) -> list[float]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=duration"]
        + ["-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise ValueError(f"ffprobe cannot read it: {out.stderr.strip()[:200]}")
    try:
        return [float(line) for line in out.stdout.split()]
    except ValueError as err:
        raise ValueError(f"ffprobe gave no stream durations ({out.stdout.strip()!r})") from err


def _ffmpeg_streams(path: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` audio streams of ``path`` as float32 ``(T, 2)`` at 44.1 kHz (one
    ffmpeg run writing a float WAV per stream)."""
    with tempfile.TemporaryDirectory() as tmp:
        outputs = [Path(tmp) / f"{i}.wav" for i in range(count)]
        command = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path)]
        for i, out in enumerate(outputs):
            command += ["-map", f"0:a:{i}", "-c:a", "pcm_f32le", "-ac", "2"]
            command += ["-ar", str(SAMPLE_RATE), str(out)]
        done = subprocess.run(command, capture_output=True)
        if done.returncode:
            raise ValueError(f"ffmpeg cannot decode it: {done.stderr.decode().strip()[:200]}")
        return [sf.read(str(out), dtype="float32", always_2d=True)[0] for out in outputs]


def read_stem_mp4(path: Path) -> dict[str, np.ndarray]:
    """The five streams of a MUSDB18 ``.stem.mp4`` (``mixture`` and the stems), ``(T, 2)`` each,
    cut to the shortest stream's duration."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise FileNotFoundError(
            "ffmpeg/ffprobe not found: install ffmpeg (apt-get install ffmpeg) to read .stem.mp4"
        )
    durations = _ffprobe_durations(path)
    if len(durations) < len(STEM_STREAMS):
        raise ValueError(f"{len(durations)} audio streams, a MUSDB18 .stem.mp4 has 5")
    decoded = _ffmpeg_streams(path, len(STEM_STREAMS))
    audio = {name: decoded[index] for name, index in STEM_STREAMS.items()}
    frames = min(round(min(durations) * SAMPLE_RATE), *(len(a) for a in audio.values()))
    return {name: wav[:frames] for name, wav in audio.items()}


def read_wav_folder(folder: Path) -> dict[str, np.ndarray]:
    """``mixture.wav`` and the four stem files of a MUSDB18-HQ track folder, ``(T, C)`` each."""
    audio = {}
    for name in STEM_STREAMS:
        path = folder / f"{name}.wav"
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (OSError, sf.SoundFileError) as err:
            raise ValueError(f"unreadable {path.name}: {str(err).strip()}") from err
        if rate != SAMPLE_RATE:
            raise ValueError(f"{path.name} is at {rate} Hz, MUSDB18-HQ is at {SAMPLE_RATE} Hz")
        audio[name] = data
    lengths = {len(a) for a in audio.values()}
    if len(lengths) > 1:
        raise ValueError(f"the mixture and stems differ in length ({sorted(lengths)} frames)")
    return audio


def _flac(wav: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wav, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def sample_for(name: str, source: Path, fmt: str, split: str) -> tuple[dict[str, bytes], float]:
    """Tar members and duration of one track; ``ValueError`` when it is unusable."""
    audio = read_stem_mp4(source) if fmt == "stems" else read_wav_folder(source)
    frames = len(audio["mixture"])
    if frames == 0:
        raise ValueError("no audio")
    seconds = frames / SAMPLE_RATE
    meta = {
        "track": name,
        "split": split,
        "duration": round(seconds, 3),
        "sample_rate": SAMPLE_RATE,
        "format": "MUSDB18 (stem.mp4)" if fmt == "stems" else "MUSDB18-HQ (wav)",
        "stems": list(STEMS),
    }
    members = {"flac": _flac(audio["mixture"]), "json": json.dumps(meta).encode("utf-8")}
    members |= {f"{stem}.flac": _flac(audio[stem]) for stem in STEMS}
    return members, seconds


def splits_of(root: Path, fmt: str) -> dict[str, dict[str, Path]]:
    """``train``/``valid``/``test`` -> track name -> source, by the official split."""
    train = list_tracks(root / "train", fmt)
    valid = {name: path for name, path in train.items() if name in VALIDATION_TRACKS}
    missing = sorted(set(VALIDATION_TRACKS) - set(valid))
    if missing:
        log.warning("%d official validation tracks are not in %s", len(missing), root / "train")
    return {
        "train": {n: p for n, p in train.items() if n not in valid},
        "valid": valid,
        "test": list_tracks(root / "test", fmt),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, required=True, help="the MUSDB18(-HQ) folder holding train/ and test/"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory for shards and index.json"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="stems: MUSDB18 .stem.mp4 files; wav: MUSDB18-HQ folders; auto: detect (default)",
    )
    parser.add_argument(
        "--max-tracks", type=int, default=None, help="write at most this many tracks per split"
    )
    parser.add_argument("--max-samples", type=int, default=8, help="tracks per shard (default: 8)")


def run(args: argparse.Namespace) -> dict:
    """Write the train/valid/test shards; returns the summary also stored in ``index.json``."""
    root = Path(args.root)
    missing = [name for name in ("train", "test") if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"MUSDB18 root {root} has no {missing} folders: pass --root the folder holding train/ test/"
        )
    fmt = detect_format(root) if args.format == "auto" else args.format
    keys = {}
    written, skipped = Counter(), Counter()
    for split, tracks in splits_of(root, fmt).items():
        with ShardWriter(args.out, split, max_samples=args.max_samples, **sharding(args)) as writer:
            for name, source in tqdm(tracks.items(), desc=f"musdb {split}", unit="track"):
                if args.max_tracks is not None and written[split] >= args.max_tracks:
                    break
                key = track_key(name)
                if keys.setdefault(key, name) != name:
                    raise ValueError(f"tracks {keys[key]!r} and {name!r} both become key {key!r}")
                try:
                    members, seconds = sample_for(name, source, fmt, split)
                except ValueError as err:
                    skipped["unusable"] += 1
                    log.warning("skipped %s: %s", source, err)
                    continue
                writer.write(key, members, seconds)
                written[split] += 1
            writer.extra_index["musdb"] = {
                "format": fmt,
                "validation": "musdb mus.yaml validation_tracks",
                "written": dict(written),
                "skipped": dict(skipped),
            }
    if not sum(written.values()):
        raise FileNotFoundError(f"no track under {root} could be read: check --root")
    print(
        f"musdb ({fmt}): written {dict(written)}, skipped {dict(skipped) or 'none'} -> {args.out}"
    )
    return {"written": dict(written), "skipped": dict(skipped), "format": fmt}
