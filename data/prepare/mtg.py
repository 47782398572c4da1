"""MTG-Jamendo: turn a local copy into shards, one sample per track, with a caption built from its tags.

Expected layout (that of the ``MTG/mtg-jamendo-dataset`` repository plus the unpacked audio)::

    ROOT/data/splits/split-0/autotagging-train.tsv       (-validation, -test; and the
    ROOT/data/splits/split-0/autotagging_genre-train.tsv  _genre/_instrument/_moodtheme/_top50tags subsets)
    ROOT/audio/14/214.mp3                                 (``--audio-dir``; ``14/214.low.mp3`` for audio-low)

The split TSVs carry whole rows (``TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION`` then one tag per
field, e.g. ``genre---rock``), so they are the only metadata read. Each sample stores the original
MP3 bytes unchanged (``<key>.mp3``) and ``<key>.json`` with the metadata and ``caption``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from data.prepare.report import PrepareReport
from data.shards import ShardWriter, check_key, sharding

HELP = "MTG-Jamendo: shard a local copy (official splits, original MP3s, captions from tags)."

log = logging.getLogger(__name__)

SUBSETS = {
    "autotagging": "autotagging",
    "top50tags": "autotagging_top50tags",
    "genre": "autotagging_genre",
    "instrument": "autotagging_instrument",
    "moodtheme": "autotagging_moodtheme",
}
SPLIT_FILES = {"train": "train", "valid": "validation", "test": "test"}
HEADER = ("TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION")
CATEGORIES = {"genre": "genres", "instrument": "instruments", "mood/theme": "moods"}

# Readable forms of the dataset's run-together tag values (the rest are used as they are).
READABLE = {
    "acidjazz": "acid jazz",
    "alternativerock": "alternative rock",
    "bluesrock": "blues rock",
    "bossanova": "bossa nova",
    "classicrock": "classic rock",
    "darkambient": "dark ambient",
    "deephouse": "deep house",
    "drumnbass": "drum and bass",
    "easylistening": "easy listening",
    "edm": "EDM",
    "ethnicrock": "ethnic rock",
    "hardrock": "hard rock",
    "heavymetal": "heavy metal",
    "hiphop": "hip hop",
    "idm": "IDM",
    "instrumentalpop": "instrumental pop",
    "instrumentalrock": "instrumental rock",
    "jazzfunk": "jazz-funk",
    "jazzfusion": "jazz fusion",
    "newage": "new age",
    "newwave": "new wave",
    "popfolk": "pop folk",
    "poprock": "pop rock",
    "postrock": "post-rock",
    "punkrock": "punk rock",
    "rnb": "rhythm and blues",
    "rocknroll": "rock and roll",
    "singersongwriter": "singer-songwriter",
    "synthpop": "synth-pop",
    "triphop": "trip hop",
    "worldfusion": "world fusion",
    "celtic": "Celtic",
    "latin": "Latin",
    "african": "African",
    "eurodance": "Eurodance",
    "acousticbassguitar": "acoustic bass guitar",
    "acousticguitar": "acoustic guitar",
    "classicalguitar": "classical guitar",
    "doublebass": "double bass",
    "drummachine": "drum machine",
    "electricguitar": "electric guitar",
    "electricpiano": "electric piano",
    "pipeorgan": "pipe organ",
    "rhodes": "Rhodes piano",
    "voice": "vocals",
    "beat": "beats",
    "bell": "bells",
    "bongo": "bongos",
    "pad": "synth pads",
    "ambiental": "ambient",
    "christmas": "Christmas",
}
# Mood/theme values that name a theme or use rather than a mood adjective.
THEMES = {
    "action",
    "adventure",
    "advertising",
    "background",
    "ballad",
    "children",
    "christmas",
    "commercial",
    "corporate",
    "documentary",
    "drama",
    "dream",
    "film",
    "game",
    "holiday",
    "horror",
    "love",
    "movie",
    "nature",
    "party",
    "soundscape",
    "space",
    "sport",
    "summer",
    "trailer",
    "travel",
}


@dataclass(frozen=True)
class Track:
    """One row of a split TSV."""

    track_id: str
    artist_id: str
    album_id: str
    path: str
    duration: float
    tags: tuple[str, ...]

    def tag_values(self) -> dict[str, list[str]]:
        """Tag values without their category prefix: ``{"genres": [...], "instruments": [...], "moods": [...]}``."""
        values: dict[str, list[str]] = {name: [] for name in CATEGORIES.values()}
        for tag in self.tags:
            category, _, value = tag.partition("---")
            if category in CATEGORIES and value.strip():
                values[CATEGORIES[category]].append(value.strip())
        return values


def readable(value: str) -> str:
    """A tag value as words: known run-together names spelled out, whitespace and ``_`` collapsed."""
    value = " ".join(value.replace("_", " ").split())
    return READABLE.get(value.lower(), value)


def _join(words: list[str], rng: random.Random) -> str:
    if len(words) < 2:
        return "".join(words)
    if len(words) > 2:
        last = ", and "
    else:  # "drum and bass & trip hop" rather than "drum and bass and trip hop"
        last = " & " if any(" and " in w for w in words) else rng.choice([" and ", " & "])
    return ", ".join(words[:-1]) + last + words[-1]


def _pick(words: list[str], limit: int, rng: random.Random) -> list[str]:
    """Up to ``limit`` of ``words``, keeping their order."""
    if len(words) <= limit:
        return words
    return [words[i] for i in sorted(rng.sample(range(len(words)), limit))]


def _article(word: str) -> str:
    vowel = word[:1].lower() in "aeiou8" and not word.lower().startswith(("eu", "uni"))
    return "An" if vowel else "A"


def caption_for(track: Track) -> str:
    """A one-sentence description from the track's tags, worded by a generator seeded with its id."""
    rng = random.Random(track.track_id)
    values = track.tag_values()
    genres = _pick([readable(v) for v in values["genres"]], 3, rng)
    instruments = _pick([readable(v) for v in values["instruments"]], 4, rng)
    moods = [v for v in values["moods"] if v.lower() not in THEMES]
    adjectives = _pick([readable(v) for v in moods], 2, rng)
    themes = _pick([readable(v) for v in values["moods"] if v.lower() in THEMES], 2, rng)

    instrument_text = ""
    if instruments:
        lead = rng.choice(["with", "featuring", "built on", "led by"])
        instrument_text = f" {lead} {_join(instruments, rng)}"
    theme_text = ""
    if themes:
        theme_text = rng.choice([", fit for {}", ", with a {} theme", ", evoking {}"]).format(
            _join(themes, rng)
        )
    if rng.random() < 0.5:
        words = " ".join(filter(None, [_join(adjectives, rng), _join(genres, rng)]))
        noun = rng.choice(["track", "piece", "tune", "recording"])
        head = f"{words} {noun}" if words else noun
        return f"{_article(head)} {head}{instrument_text}{theme_text}."
    genre_text = _join(genres, rng)
    head = f"{genre_text[:1].upper()}{genre_text[1:]} music" if genres else "Music"
    mood_text = (
        f", {_join(adjectives, rng)} {rng.choice(['mood', 'feel', 'character'])}"
        if adjectives
        else ""
    )
    return f"{head}{instrument_text}{mood_text}{theme_text}."


def metadata_file(root: Path, *parts: str) -> Path:
    """``ROOT/data/<parts>`` (a repository checkout) or ``ROOT/<parts>`` (the data folder itself)."""
    candidates = [root.joinpath("data", *parts), root.joinpath(*parts)]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no MTG-Jamendo file {candidates[0]} (nor {candidates[1]}): point --root at a checkout of "
        "MTG/mtg-jamendo-dataset, or pick an existing --split-dir/--subset"
    )


def read_split(path: Path) -> list[Track]:
    """The tracks of one split TSV, in file order."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or tuple(rows[0][: len(HEADER)]) != HEADER:
        raise ValueError(
            f"{path} does not start with the header {' '.join(HEADER)}: "
            "restore it from MTG/mtg-jamendo-dataset"
        )
    tracks = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(field.strip() for field in row):
            continue
        try:
            track = Track(
                track_id=check_key(row[0].strip()),
                artist_id=row[1].strip(),
                album_id=row[2].strip(),
                path=row[3].strip(),
                duration=float(row[4]),
                tags=tuple(field.strip() for field in row[5:] if field.strip()),
            )
        except (IndexError, ValueError) as err:
            raise ValueError(
                f"{path} line {line} is malformed ({err}): restore it from MTG/mtg-jamendo-dataset"
            ) from err
        tracks.append(track)
    return tracks


def audio_file(audio_dir: Path, rel_path: str, low_quality: bool) -> Path | None:
    """The track's file: ``NN/ID.mp3`` or ``NN/ID.low.mp3``, the preferred quality first; None if neither exists."""
    high = audio_dir / rel_path
    low = high.with_suffix(".low.mp3")
    for path in (low, high) if low_quality else (high, low):
        if path.is_file():
            return path
    return None


def sample_for(track: Track, path: Path, audio_dir: Path) -> tuple[dict[str, bytes], float]:
    """The tar members of one track and its duration; raises ``ValueError`` if the file is not a readable MP3."""
    try:
        info = sf.info(str(path))
        data = path.read_bytes()
    except (sf.SoundFileError, OSError) as err:
        raise ValueError(str(err).strip() or type(err).__name__) from err
    if info.format != "MP3":
        raise ValueError(f"not an MP3 but {info.format}")
    if info.frames <= 0:
        raise ValueError("no audio frames")
    meta = {
        "track_id": track.track_id,
        "artist_id": track.artist_id,
        "album_id": track.album_id,
        "path": track.path,
        "audio_path": path.relative_to(audio_dir).as_posix(),
        "duration": round(info.frames / info.samplerate, 3),
        "sample_rate": info.samplerate,
        "channels": info.channels,
        "tags": list(track.tags),
        **track.tag_values(),
        "caption": caption_for(track),
    }
    members = {
        "mp3": data,
        "json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"),
    }
    return members, meta["duration"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        required=True,
        help="local copy: a checkout of MTG/mtg-jamendo-dataset (TSVs under data/)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output directory for shards and index.json"
    )
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=None,
        help="folder holding the NN/ID.mp3 files (default: ROOT/audio if it exists, else ROOT)",
    )
    parser.add_argument(
        "--split-dir", default="split-0", help="folder under data/splits (default: split-0)"
    )
    parser.add_argument(
        "--subset",
        choices=sorted(SUBSETS),
        default="autotagging",
        help="which tag set's split files to use (default: autotagging, all tags)",
    )
    parser.add_argument(
        "--max-tracks",
        type=_positive_int,
        default=None,
        help="write at most this many tracks per split (quick trials)",
    )
    parser.add_argument(
        "--low-quality",
        action="store_true",
        help="prefer the audio-low files (NN/ID.low.mp3); either quality is used if the other is missing",
    )
    parser.add_argument(
        "--max-samples", type=_positive_int, default=256, help="tracks per shard (default: 256)"
    )


def run(args: argparse.Namespace) -> dict:
    """Write the train/valid/test shards; returns the summary also stored in ``index.json`` under ``mtg``."""
    root = Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"MTG-Jamendo root {root} does not exist: pass --root the folder of your local copy"
        )
    default_audio = root / "audio" if (root / "audio").is_dir() else root
    audio_dir = Path(args.audio_dir) if args.audio_dir else default_audio
    if not audio_dir.is_dir():
        raise FileNotFoundError(
            f"audio folder {audio_dir} does not exist: "
            "pass --audio-dir the folder holding the NN/ID.mp3 files"
        )
    prefix = SUBSETS[args.subset]
    splits = {
        split: read_split(metadata_file(root, "splits", args.split_dir, f"{prefix}-{name}.tsv"))
        for split, name in SPLIT_FILES.items()
    }

    report = PrepareReport("files")
    summary = {"subset": args.subset, "split_dir": args.split_dir, "audio_dir": str(audio_dir)}
    for split, tracks in splits.items():
        with (
            logging_redirect_tqdm(),
            ShardWriter(args.out, split, max_samples=args.max_samples, **sharding(args)) as writer,
        ):
            for track in tqdm(tracks, desc=f"mtg {split}", unit="track"):
                if args.max_tracks is not None and report.written[split] >= args.max_tracks:
                    break
                path = audio_file(audio_dir, track.path, args.low_quality)
                if path is None:
                    report.skip("missing_audio", audio_dir / track.path)
                    continue
                try:
                    members, seconds = sample_for(track, path, audio_dir)
                except ValueError as err:
                    report.skip("unreadable_audio", path, str(err))
                    continue
                writer.write(track.track_id, members, seconds)
                report.add(split, seconds)
            writer.extra_index["mtg"] = summary | report.as_dict()
    print(f"mtg: {report.line()} -> {args.out}")
    if not sum(report.written.values()):
        raise FileNotFoundError(
            f"no track's audio could be read under {audio_dir}: pass --audio-dir the folder holding the NN/ID.mp3 files"
        )
    return summary | report.as_dict()
