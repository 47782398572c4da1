"""Which ``music21`` corpus pieces the synthetic set uses, their styles, and their fixed split.

A piece's split is a hash of its corpus path, so it never depends on the seed or the size of
a build: a piece can give several examples (different arrangements), all in the same split.
Scores are parsed from source without ``music21``'s pickle cache, so nothing is written
outside the output directory.
"""

from __future__ import annotations

import functools
import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from music21 import converter, corpus, stream

# Quartet movements above this size take seconds to parse; the small ones are plenty.
MAX_QUARTET_BYTES = 64 * 1024
DANCES = ("Reel", "Jig", "Slipjig", "Hornpipe", "Strathspey", "Clog", "Fling")
COMPOSERS = {
    "bach": "J. S. Bach",
    "palestrina": "Giovanni Pierluigi da Palestrina",
    "haydn": "Joseph Haydn",
    "mozart": "Wolfgang Amadeus Mozart",
    "beethoven": "Ludwig van Beethoven",
    "ryansMammoth": "traditional",
}


@dataclass(frozen=True)
class Style:
    """How a family of pieces is described and played."""

    period: str
    genre: str
    tempo: tuple[int, int]  # quarter notes per minute
    weight: float  # share of the examples


STYLES = {
    "chorale": Style("Baroque", "chorale", (60, 96), 0.3),
    "renaissance": Style("Renaissance", "mass movement", (110, 160), 0.2),
    "quartet": Style("Classical", "string quartet", (72, 138), 0.15),
    "folk": Style("folk", "tune", (84, 132), 0.35),
}
_RULES = (
    ("chorale", re.compile(r"^bach/bwv\d+\.\d+\.mxl$")),
    ("renaissance", re.compile(r"^palestrina/[^/]+\.krn$")),
    ("quartet", re.compile(r"^(haydn|mozart|beethoven)/[^/]+/movement\d+\.mxl$")),
    ("folk", re.compile(r"^ryansMammoth/[^/]+\.abc$")),
)
# Piece i goes to SPLIT_SLOTS[hash % 10]: 80% train, 10% valid, 10% test.
SPLIT_SLOTS = ("train",) * 8 + ("valid", "test")


@dataclass(frozen=True)
class Piece:
    """One corpus file: ``source`` is its path inside the corpus, e.g. ``bach/bwv66.6.mxl``."""

    source: str
    style: str

    @property
    def piece_id(self) -> str:
        """Key-safe id: ``bach/bwv66.6.mxl`` -> ``bach-bwv66_6``."""
        stem = self.source.rsplit(".", 1)[0]
        return re.sub(r"[^A-Za-z0-9_\-]", "_", stem.replace("/", "-"))

    @property
    def split(self) -> str:
        return split_of(self.source)

    @property
    def composer(self) -> str:
        return COMPOSERS[self.source.split("/", 1)[0]]

    @property
    def composer_tag(self) -> str:
        """Short lower-case composer tag: ``bach``, ``mozart``, ``traditional``..."""
        folder = self.source.split("/", 1)[0]
        return "traditional" if self.style == "folk" else folder

    @property
    def genre(self) -> str:
        """The style's genre; folk tunes are named after their dance (``reel``, ``jig``...)."""
        if self.style == "folk":
            name = self.source.rsplit("/", 1)[-1].removesuffix(".abc")
            dance = next((d for d in DANCES if name.endswith(d)), None)
            return "slip jig" if dance == "Slipjig" else (dance or "tune").lower()
        return STYLES[self.style].genre


def split_of(source: str) -> str:
    """The split of a corpus path: a pure function of the path (never of seed or size)."""
    digest = hashlib.sha256(source.encode()).digest()
    return SPLIT_SLOTS[int.from_bytes(digest[:8], "big") % len(SPLIT_SLOTS)]


def _relative(path: Path) -> str:
    return path.as_posix().split("/corpus/", 1)[1]


@functools.lru_cache(maxsize=1)
def list_pieces() -> tuple[Piece, ...]:
    """Every usable piece of the installed corpus, sorted by path."""
    pieces = []
    for path in corpus.getCorePaths():
        source = _relative(Path(path))
        style = next((s for s, rule in _RULES if rule.match(source)), None)
        if style is None or (style == "quartet" and Path(path).stat().st_size > MAX_QUARTET_BYTES):
            continue
        pieces.append(Piece(source, style))
    return tuple(sorted(pieces, key=lambda p: p.source))


def pools() -> dict[str, dict[str, list[Piece]]]:
    """Pieces grouped by split, then by style."""
    out: dict[str, dict[str, list[Piece]]] = {}
    for piece in list_pieces():
        out.setdefault(piece.split, {}).setdefault(piece.style, []).append(piece)
    return out


def load_score(source: str) -> stream.Score:
    """Parse a corpus file (first tune of a collection) without reading or writing pickles."""
    parser = converter.Converter()
    with warnings.catch_warnings():  # e.g. overfull measures in a few MusicXML files
        warnings.simplefilter("ignore")
        parser.parseFileNoPickle(corpus.getWork(source))
    score = parser.stream
    if isinstance(score, stream.Opus):
        score = score.scores[0]
    if not isinstance(score, stream.Score):
        score = stream.Score([score])
    return score
