"""MAESTRO v3: turn a local copy into shards, one sample per performance.

Expected layout (that of ``maestro-v3.0.0.zip`` unpacked)::

    ROOT/maestro-v3.0.0.csv   canonical_composer, canonical_title, split, year,
                              midi_filename, audio_filename, duration
    ROOT/2004/MIDI-Unprocessed_..._wav.midi
    ROOT/2004/MIDI-Unprocessed_..._wav.wav

The official splits ``train``/``validation``/``test`` become ``train``/``valid``/``test``. The
WAV audio is re-encoded losslessly as 16-bit FLAC (optionally resampled / downmixed). The notes
(``<key>.mid``) have the sustain pedal applied as MT3 applies it before tokenising and scoring
(:mod:`data.prepare.midi`); control changes are dropped. Keys are the MIDI path without its
extension, ``/`` replaced by ``-``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
from collections import Counter
from pathlib import Path

import soundfile as sf
import torch
from tqdm import tqdm

from data.prepare.midi import midi_bytes, read_midi, sustained_tracks
from data.shards import ShardWriter, check_key, sharding
from musicgen.audio import convert_audio

HELP = "MAESTRO v3: shard a local copy (official splits, FLAC audio, sustain-pedal notes)."
log = logging.getLogger(__name__)

COLUMNS = (
    "canonical_composer",
    "canonical_title",
    "split",
    "year",
    "midi_filename",
    "audio_filename",
    "duration",
)
SPLITS = {"train": "train", "validation": "valid", "test": "test"}


def sample_key(midi_filename: str) -> str:
    """``2004/MIDI-Un..._wav.midi`` -> ``2004-MIDI-Un..._wav`` (a valid shard key)."""
    stem = midi_filename.rsplit(".", 1)[0]
    return check_key(re.sub(r"[^A-Za-z0-9_\-]", "-", stem))


def read_rows(root: Path) -> list[dict]:
    """Rows of the metadata CSV (``maestro-v*.csv`` in ``root``), checked for the needed columns."""
    found = sorted(root.glob("maestro-v*.csv"))
    if not found:
        raise FileNotFoundError(
            f"no maestro-v*.csv in {root}: point --root at the unpacked maestro-v3.0.0 folder"
        )
    with found[-1].open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(
            f"{found[-1]} lacks columns {missing or list(COLUMNS)}: restore the original CSV"
        )
    return rows


def encode_audio(path: Path, sample_rate: int | None, mono: bool) -> tuple[bytes, int, int, float]:
    """FLAC bytes of a WAV file, its rate, channels and duration."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wav = torch.from_numpy(data.T.copy())
    target = sample_rate or rate
    wav = convert_audio(wav, rate, target, 1 if mono else wav.shape[0])
    buffer = io.BytesIO()
    sf.write(buffer, wav.clamp(-1, 1).numpy().T, target, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), target, wav.shape[0], wav.shape[1] / target


def caption(row: dict) -> str:
    return f"{row['canonical_composer']}: {row['canonical_title']}, solo piano performance ({row['year']})"


def sample_for(
    root: Path, row: dict, sample_rate: int | None, mono: bool
) -> tuple[dict[str, bytes], float]:
    """Tar members and duration of one performance; ``ValueError`` when a file is unusable."""
    midi = read_midi(root / row["midi_filename"])
    try:
        audio, rate, channels, seconds = encode_audio(
            root / row["audio_filename"], sample_rate, mono
        )
    except (OSError, sf.SoundFileError) as err:
        raise ValueError(str(err).strip() or type(err).__name__) from err
    meta = {key: row[key] for key in COLUMNS} | {
        "duration": round(seconds, 3),
        "csv_duration": float(row["duration"]),
        "sample_rate": rate,
        "channels": channels,
        "sustain": "applied (CC64, note_seq semantics)",
        "caption": caption(row),
    }
    members = {
        "flac": audio,
        "mid": midi_bytes(sustained_tracks(midi)),
        "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
    }
    return members, seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, required=True, help="the unpacked maestro-v3.0.0 folder (with the CSV)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory for shards and index.json"
    )
    parser.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="resample the audio (default: keep the original rate)",
    )
    parser.add_argument("--mono", action="store_true", help="downmix the audio to mono")
    parser.add_argument(
        "--max-tracks",
        type=int,
        default=None,
        help="write at most this many performances per split",
    )
    parser.add_argument(
        "--max-samples", type=int, default=16, help="performances per shard (default: 16)"
    )


def run(args: argparse.Namespace) -> dict:
    """Write the train/valid/test shards; returns the summary also stored in ``index.json``."""
    root = Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"MAESTRO root {root} does not exist: pass --root the unpacked maestro-v3.0.0 folder"
        )
    rows = read_rows(root)
    written, skipped = Counter(), Counter()
    for source, split in SPLITS.items():
        with ShardWriter(args.out, split, max_samples=args.max_samples, **sharding(args)) as writer:
            for row in tqdm(
                [r for r in rows if r["split"] == source], desc=f"maestro {split}", unit="piece"
            ):
                if args.max_tracks is not None and written[split] >= args.max_tracks:
                    break
                try:
                    members, seconds = sample_for(root, row, args.sample_rate, args.mono)
                except ValueError as err:
                    skipped["unreadable"] += 1
                    log.warning("skipped %s: %s", row["audio_filename"], err)
                    continue
                writer.write(sample_key(row["midi_filename"]), members, seconds)
                written[split] += 1
            writer.extra_index["maestro"] = {"written": dict(written), "skipped": dict(skipped)}
    if not sum(written.values()):
        raise FileNotFoundError(f"no performance under {root} could be read: check --root")
    print(f"maestro: written {dict(written)}, skipped {dict(skipped) or 'none'} -> {args.out}")
    return {"written": dict(written), "skipped": dict(skipped)}
