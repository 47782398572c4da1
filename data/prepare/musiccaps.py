"""MusicCaps: the caption CSV and a local folder of its clips become shards (MusicGen's Table 1).

Expected input::

    musiccaps-public.csv   ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,
                           author_id,is_balanced_subset,is_audioset_eval
    AUDIO/<ytid>.wav                   the 10 s clip (``.flac``/``.mp3``/``.ogg`` too), or
    AUDIO/<ytid>_<start>_<end>.wav     the same with the clip's times (``-0Gj8-vB1q4_30_40.wav``)

Files are found anywhere under ``--audio`` (sub-folders are searched). With ``--whole-videos`` the
files hold whole soundtracks and the ``[start_s, end_s)`` segment is cut out. Every kept clip goes
to the ``test`` split (the paper evaluates on all of MusicCaps); ``--eval-only`` keeps the
AudioSet-eval rows only, and ``--layout audioset`` puts those in ``test`` and the rest in
``train``. A sample is ``<ytid>.flac`` (WAV and cut clips re-encoded losslessly; FLAC, MP3 and
OGG files stored unchanged) and ``<ytid>.json`` with the CSV row, ``caption`` and the aspect
list as ``tags``. Clips missing or unreadable are skipped and counted in ``index.json``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import logging
import re
from pathlib import Path

import soundfile as sf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from data.prepare.report import PrepareReport
from data.shards import ShardWriter, check_key, sharding

HELP = "MusicCaps: shard the caption CSV and a local folder of its clips (test split by default)."
log = logging.getLogger(__name__)

COLUMNS = (
    "ytid",
    "start_s",
    "end_s",
    "audioset_positive_labels",
    "aspect_list",
    "caption",
    "author_id",
    "is_balanced_subset",
    "is_audioset_eval",
)
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
STORED_AS_IS = {"FLAC": "flac", "MP3": "mp3", "OGG": "ogg"}
TIMED_NAME = re.compile(r"^(?P<ytid>.+)_\d+(?:\.\d+)?_\d+(?:\.\d+)?$")
CLIP_SLACK_SECONDS = 1.0  # a file this much longer than its clip is probably a whole soundtrack


def _flag(value: str, column: str, line: int) -> bool:
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"line {line}: {column} must be True or False, got {value!r}")
    return text == "true"


def parse_row(row: dict[str, str], line: int) -> dict:
    """One CSV row as typed metadata (``aspect_list`` is a Python-style list of strings)."""
    try:
        aspects = ast.literal_eval(row["aspect_list"].strip() or "[]")
        start, end = float(row["start_s"]), float(row["end_s"])
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"line {line}: cannot parse start_s/end_s/aspect_list ({err})") from err
    if not isinstance(aspects, list) or not all(isinstance(a, str) for a in aspects):
        raise ValueError(f"line {line}: aspect_list must be a list of strings")
    labels = [
        label.strip() for label in row["audioset_positive_labels"].split(",") if label.strip()
    ]
    return {
        "ytid": row["ytid"].strip(),
        "start_s": start,
        "end_s": end,
        "audioset_positive_labels": labels,
        "aspect_list": aspects,
        "tags": aspects,
        "caption": row["caption"].strip(),
        "author_id": row["author_id"].strip(),
        "is_balanced_subset": _flag(row["is_balanced_subset"], "is_balanced_subset", line),
        "is_audioset_eval": _flag(row["is_audioset_eval"], "is_audioset_eval", line),
    }


def read_csv(path: Path) -> list[dict]:
    """The rows of ``musiccaps-public.csv``, typed, in file order."""
    if not path.is_file():
        raise FileNotFoundError(
            f"MusicCaps CSV {path} does not exist: pass --csv the musiccaps-public.csv file"
        )
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} lacks the MusicCaps columns {missing}: "
                "pass the original musiccaps-public.csv"
            )
        return [parse_row(row, line) for line, row in enumerate(reader, start=2)]


def index_audio(audio_dir: Path) -> dict[str, Path]:
    """Audio files under ``audio_dir`` by ytid (a ``<ytid>`` name beats ``<ytid>_<s>_<e>``)."""
    found: dict[str, Path] = {}
    timed: dict[str, Path] = {}
    for path in sorted(audio_dir.rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
            continue
        found.setdefault(path.stem, path)
        match = TIMED_NAME.match(path.stem)
        if match:
            timed.setdefault(match["ytid"], path)
    return timed | found


def encode_clip(path: Path, start: float, end: float, whole_video: bool) -> tuple[str, bytes, dict]:
    """The tar member (extension, bytes) of one clip and its duration, rate and channels.

    Raises ``ValueError`` when the file is unusable.
    """
    try:
        info = sf.info(str(path))
        if info.frames <= 0:
            raise ValueError("no audio frames")
        if not whole_video and info.format in STORED_AS_IS:
            return STORED_AS_IS[info.format], path.read_bytes(), _audio_meta(info)
        first = round(start * info.samplerate) if whole_video else 0
        last = round(end * info.samplerate) if whole_video else info.frames
        if first >= info.frames:
            raise ValueError(
                f"the file ends at {info.duration:.1f} s, before the clip starts at {start:g} s"
            )
        # read from the start: seeking in MP3 is not sample-exact
        data, rate = sf.read(
            str(path), stop=min(last, info.frames), dtype="float32", always_2d=True
        )
        data = data[first:]
    except (sf.SoundFileError, OSError, RuntimeError) as err:
        raise ValueError(str(err).strip() or type(err).__name__) from err
    buffer = io.BytesIO()
    subtype = "PCM_16" if info.subtype in ("PCM_16", "PCM_U8", "PCM_S8") else "PCM_24"
    sf.write(buffer, data.clip(-1.0, 1.0), rate, format="FLAC", subtype=subtype)
    buffer.seek(0)
    return "flac", buffer.getvalue(), _audio_meta(sf.info(buffer))


def _audio_meta(info: object) -> dict:
    return {
        "duration": round(info.frames / info.samplerate, 3),
        "sample_rate": info.samplerate,
        "channels": info.channels,
    }


def split_of(row: dict, layout: str) -> str:
    return "test" if layout == "test" or row["is_audioset_eval"] else "train"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", type=Path, required=True, help="musiccaps-public.csv")
    parser.add_argument(
        "--audio",
        type=Path,
        required=True,
        help="folder holding the clips as <ytid>.wav or <ytid>_<start>_<end>.wav (.flac/.mp3/.ogg)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory for shards and index.json"
    )
    parser.add_argument(
        "--eval-only", action="store_true", help="keep only the is_audioset_eval rows"
    )
    parser.add_argument(
        "--layout",
        choices=("test", "audioset"),
        default="test",
        help="test: every clip in the test split (default); "
        "audioset: is_audioset_eval rows in test, the others in train",
    )
    parser.add_argument(
        "--whole-videos",
        action="store_true",
        help="the files are whole soundtracks: cut [start_s, end_s) out of each",
    )
    parser.add_argument(
        "--max-clips", type=_positive_int, default=None, help="write at most this many clips"
    )
    parser.add_argument(
        "--max-samples", type=_positive_int, default=256, help="clips per shard (default: 256)"
    )


def run(args: argparse.Namespace) -> dict:
    """Write the shards; returns the summary also stored in ``index.json`` under ``musiccaps``."""
    rows = read_csv(Path(args.csv))
    audio_dir = Path(args.audio)
    if not audio_dir.is_dir():
        raise FileNotFoundError(
            f"audio folder {audio_dir} does not exist: pass --audio the folder of MusicCaps clips"
        )
    if args.eval_only:
        rows = [row for row in rows if row["is_audioset_eval"]]
    files = index_audio(audio_dir)
    report = PrepareReport("clips")
    summary = {
        "csv": str(args.csv),
        "audio_dir": str(audio_dir),
        "layout": args.layout,
        "eval_only": args.eval_only,
        "whole_videos": args.whole_videos,
    }
    writers: dict[str, ShardWriter] = {}
    with logging_redirect_tqdm():
        for row in tqdm(rows, desc="musiccaps", unit="clip"):
            if args.max_clips is not None and sum(report.written.values()) >= args.max_clips:
                break
            path = files.get(row["ytid"])
            if path is None:
                report.skip("missing_audio", row["ytid"])
                continue
            try:
                key = check_key(row["ytid"])
                ext, data, audio = encode_clip(
                    path, row["start_s"], row["end_s"], args.whole_videos
                )
            except ValueError as err:
                report.skip("unreadable_audio", row["ytid"], f"{path}: {err}")
                continue
            if (
                not args.whole_videos
                and audio["duration"] > row["end_s"] - row["start_s"] + CLIP_SLACK_SECONDS
            ):
                log.warning(
                    "%s lasts %.1f s, longer than its clip: "
                    "pass --whole-videos if the files are whole soundtracks",
                    path,
                    audio["duration"],
                )
            meta = row | audio | {"audio_path": path.relative_to(audio_dir).as_posix()}
            split = split_of(row, args.layout)
            if split not in writers:
                writers[split] = ShardWriter(
                    args.out, split, max_samples=args.max_samples, **sharding(args)
                )
            writers[split].write(
                key,
                {ext: data, "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()},
                meta["duration"],
            )
            report.add(split, meta["duration"])
    for writer in writers.values():
        writer.extra_index["musiccaps"] = summary | report.as_dict()
        writer.close()
    print(f"musiccaps: {report.line()} -> {args.out}")
    if not writers:
        raise FileNotFoundError(
            f"no MusicCaps clip could be read under {audio_dir}: name the files <ytid>.wav "
            "(or <ytid>_<start>_<end>.wav, .flac/.mp3/.ogg) and pass --audio their folder"
        )
    return summary | report.as_dict()
