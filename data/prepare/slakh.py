"""Slakh2100: turn a local copy into shards, one sample per track (the full mix).

Expected layout (``slakh2100_flac_redux`` or the original release, unpacked)::

    ROOT/{train,validation,test}/TrackNNNNN/mix.flac
                                           metadata.yaml   stems: {S00: {inst_class, program_num,
                                                           is_drum, midi_saved, audio_rendered, ...}}
                                           MIDI/S00.mid    one file per stem
                                           stems/S00.flac  one file per rendered stem
                                           all_src.mid

``validation`` becomes ``valid``; other folders (``omitted``) are ignored. The mix is stored
unchanged. The notes are those of the stems whose MIDI was saved and whose audio was rendered
(others are not in the mix), each stem's sustain pedal applied as MT3 does, one MIDI track per
stem. Programs come from ``metadata.yaml`` (``program_num``; drums: ``is_drum``, program 0):

* ``--programs mt3`` (default): mapped to the instrument tokens MT3 trained and scored Slakh
  with (paper Table 7, one token per Slakh instrument class); the class of a program is looked
  up in slakh-generation's ``classes_strict.json`` (its GM numbers are 1-based). Programs of no
  class (synth bass, synth brass, 96 and up) keep their number.
* ``--programs metadata``: ``program_num`` unchanged.

``--stems`` also writes ``drums``/``bass``/``other``/``vocals`` stems (sums of the rendered
stems: drums; programs 32-39; choir and voice 52-54; the rest).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from tqdm import tqdm

from data.prepare.midi import midi_bytes, read_midi, sustained_tracks
from data.shards import STEMS, ShardWriter, check_key, sharding
from musicgen.notes import IS_DRUM, PROGRAM

HELP = "Slakh2100: shard a local copy (official splits, mix audio, per-stem notes with programs)."
log = logging.getLogger(__name__)

SPLITS = {"train": "train", "validation": "valid", "test": "test"}

# MT3 instrument token of each Slakh class (MT3 paper, Table 7) and the class's programs
# (0-based; slakh-generation classes_strict.json lists them 1-based).
MT3_CLASSES: dict[str, tuple[int, tuple[int, ...]]] = {
    "Acoustic Piano": (0, (0, 1, 3, 6)),
    "Electric Piano": (4, (2, 4, 5, 7)),
    "Chromatic Percussion": (8, tuple(range(8, 16))),
    "Organ": (16, tuple(range(16, 24))),
    "Acoustic Guitar": (24, (24, 25)),
    "Clean Electric Guitar": (26, (26, 27, 28, 31)),
    "Distorted Electric Guitar": (29, (29, 30)),
    "Acoustic Bass": (32, (32,)),
    "Electric Bass": (33, (33, 34, 35, 36, 37)),
    "Violin": (40, (40,)),
    "Viola": (41, (41,)),
    "Cello": (42, (42,)),
    "Contrabass": (43, (43,)),
    "Orchestral Harp": (46, (46,)),
    "Timpani": (47, (47,)),
    "String Ensemble": (48, (44, 45, 48, 49)),
    "Synth Strings": (50, (50, 51)),
    "Choir and Voice": (52, (52, 53, 54)),
    "Orchestral Hit": (55, (55,)),
    "Trumpet": (56, (56, 59)),
    "Trombone": (57, (57,)),
    "Tuba": (58, (58,)),
    "French Horn": (60, (60,)),
    "Brass Section": (61, (61,)),
    "Soprano/Alto Sax": (64, (64, 65)),
    "Tenor Sax": (66, (66,)),
    "Baritone Sax": (67, (67,)),
    "Oboe": (68, (68,)),
    "English Horn": (69, (69,)),
    "Bassoon": (70, (70,)),
    "Clarinet": (71, (71,)),
    "Pipe": (73, tuple(range(72, 80))),
    "Synth Lead": (80, tuple(range(80, 88))),
    "Synth Pad": (88, tuple(range(88, 96))),
}
MT3_PROGRAMS = {p: token for token, programs in MT3_CLASSES.values() for p in programs}
PROGRAM_MODES = ("mt3", "metadata")


def stem_program(stem: dict, mode: str) -> tuple[int, bool]:
    """``(program, is_drum)`` of a stem's metadata entry."""
    if stem.get("is_drum"):
        return 0, True
    program = int(stem["program_num"])
    return (MT3_PROGRAMS.get(program, program) if mode == "mt3" else program), False


def stem_group(program_num: int, is_drum: bool) -> str:
    if is_drum:
        return "drums"
    if 32 <= program_num <= 39:
        return "bass"
    return "vocals" if 52 <= program_num <= 54 else "other"


def _flac(wav: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wav, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def grouped_stems(
    track: Path, stems: dict[str, dict], frames: int, channels: int, rate: int
) -> dict[str, bytes]:
    """``<group>.flac`` members: the sums of the rendered stems of each group, mix-length."""
    sums = {g: np.zeros((frames, channels), dtype=np.float32) for g in STEMS}
    for name, stem in stems.items():
        data, _ = sf.read(str(track / "stems" / f"{name}.flac"), dtype="float32", always_2d=True)
        group = stem_group(int(stem.get("program_num", 0)), bool(stem.get("is_drum")))
        length = min(len(data), frames)
        sums[group][:length] += data[:length, :channels]
    return {f"{g}.flac": _flac(np.clip(sums[g], -1, 1), rate) for g in STEMS}


def sample_for(track: Path, mode: str, with_stems: bool) -> tuple[dict[str, bytes], float]:
    """Tar members and duration of one track; ``ValueError`` when it is unusable."""
    try:
        metadata = yaml.safe_load((track / "metadata.yaml").read_text())
        mix = sf.info(str(track / "mix.flac"))
    except (OSError, yaml.YAMLError, sf.SoundFileError) as err:
        raise ValueError(str(err).strip() or type(err).__name__) from err
    stems = {
        name: stem
        for name, stem in sorted((metadata or {}).get("stems", {}).items())
        if stem.get("midi_saved") and stem.get("audio_rendered")
    }
    if not stems:
        raise ValueError("no stem with saved MIDI and rendered audio")
    tracks = []
    for name, stem in stems.items():
        program, is_drum = stem_program(stem, mode)
        for notes in sustained_tracks(read_midi(track / "MIDI" / f"{name}.mid")):
            notes[:, PROGRAM], notes[:, IS_DRUM] = program, float(is_drum)
            tracks.append(notes)
    seconds = mix.frames / mix.samplerate
    classes = list(dict.fromkeys(str(s.get("inst_class", "")).lower() for s in stems.values()))
    meta = {
        "track": track.name,
        "uuid": metadata.get("UUID"),
        "duration": round(seconds, 3),
        "sample_rate": mix.samplerate,
        "programs": mode,
        "stems": {
            name: {**stem, "program": stem_program(stem, mode)[0]} for name, stem in stems.items()
        },
        "caption": f"a mix of {', '.join(classes)}",
    }
    members = {
        "flac": (track / "mix.flac").read_bytes(),
        "mid": midi_bytes(tracks),
        "json": json.dumps(meta, sort_keys=True, default=str).encode("utf-8"),
    }
    if with_stems:
        try:
            members |= grouped_stems(track, stems, mix.frames, mix.channels, mix.samplerate)
        except (OSError, sf.SoundFileError) as err:
            raise ValueError(f"unreadable stem: {err}") from err
    return members, seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        required=True,
        help="the Slakh2100 folder holding train/ validation/ test/",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory for shards and index.json"
    )
    parser.add_argument(
        "--programs",
        choices=PROGRAM_MODES,
        default="mt3",
        help="program numbers: MT3's Slakh class tokens (default) or metadata's program_num",
    )
    parser.add_argument(
        "--stems", action="store_true", help="also write drums/bass/other/vocals stems"
    )
    parser.add_argument(
        "--max-tracks", type=int, default=None, help="write at most this many tracks per split"
    )
    parser.add_argument(
        "--max-samples", type=int, default=32, help="tracks per shard (default: 32)"
    )


def run(args: argparse.Namespace) -> dict:
    """Write the train/valid/test shards; returns the summary also stored in ``index.json``."""
    root = Path(args.root)
    missing = [name for name in SPLITS if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"Slakh root {root} has no {missing} folders: pass --root the folder holding train/ validation/ test/"
        )
    written, skipped = Counter(), Counter()
    for source, split in SPLITS.items():
        with ShardWriter(args.out, split, max_samples=args.max_samples, **sharding(args)) as writer:
            for track in tqdm(
                sorted(p for p in (root / source).iterdir() if p.is_dir()),
                desc=f"slakh {split}",
                unit="track",
            ):
                if args.max_tracks is not None and written[split] >= args.max_tracks:
                    break
                try:
                    members, seconds = sample_for(track, args.programs, args.stems)
                except ValueError as err:
                    skipped["unusable"] += 1
                    log.warning("skipped %s: %s", track, err)
                    continue
                writer.write(check_key(track.name), members, seconds)
                written[split] += 1
            writer.extra_index["slakh"] = {
                "programs": args.programs,
                "stems": args.stems,
                "written": dict(written),
                "skipped": dict(skipped),
            }
    if not sum(written.values()):
        raise FileNotFoundError(f"no track under {root} could be read: check --root")
    print(f"slakh: written {dict(written)}, skipped {dict(skipped) or 'none'} -> {args.out}")
    return {"written": dict(written), "skipped": dict(skipped)}
