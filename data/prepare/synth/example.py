"""One dataset example, end to end: arrange a piece, render its stems, encode the sample.

Runs inside pool workers. An example depends only on its :class:`ExampleSpec` (seed, index and
piece), never on which worker renders it or what that worker rendered before.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi

from data.decode import SILENCE_DB
from data.prepare.synth.arrange import arrange
from data.prepare.synth.captions import describe
from data.prepare.synth.corpus import STYLES, Piece
from data.prepare.synth.instruments import instrument_words, stem_for
from data.prepare.synth.notation import load_notation
from data.prepare.synth.render import Renderer, common_gain, flac_bytes, to_pcm16
from data.shards import STEMS

TAIL_SECONDS = 1.0  # audio rendered after the last note-off, for the release
# No window of the shortest training crop of any preset (experiment=compression_tiny) may be as
# quiet as the pipeline's silence threshold: the loader would skip such crops.
MIN_SEGMENT_SECONDS = 0.25


@dataclass(frozen=True)
class ExampleSpec:
    index: int
    seed: int
    split: str
    piece: Piece

    @property
    def key(self) -> str:
        return f"{self.piece.piece_id}-a{self.index:04d}"


@dataclass(frozen=True)
class Example:
    key: str
    split: str
    members: dict[str, bytes]
    seconds: float


_renderer: Renderer | None = None


def init_worker(soundfont: str | None, sample_rate: int) -> None:
    """Load the soundfont for this process (``None`` releases it)."""
    global _renderer
    _renderer = Renderer(Path(soundfont), sample_rate) if soundfont else None


def _render_stems(midi: pretty_midi.PrettyMIDI, renderer: Renderer) -> dict[str, np.ndarray]:
    """int16 stems (zeros where a stem has no instrument) and the mix as their exact sum."""
    frames = int(np.ceil((midi.get_end_time() + TAIL_SECONDS) * renderer.sample_rate))
    stems = {}
    for stem in STEMS:
        instruments = [i for i in midi.instruments if stem_for(i.program, i.is_drum) == stem]
        stems[stem] = renderer.render(instruments, frames) if instruments else np.zeros(frames)
    mix = np.sum(list(stems.values()), axis=0)
    gain = common_gain(mix, list(stems.values()))
    pcm = {stem: to_pcm16(audio * gain) for stem, audio in stems.items()}
    pcm["mix"] = np.sum([pcm[s].astype(np.int32) for s in STEMS], axis=0).astype(np.int16)
    return pcm


def trim_silent_tail(
    pcm: dict[str, np.ndarray], sample_rate: int, min_end: int
) -> dict[str, np.ndarray] | None:
    """``pcm`` without the release tail where a ``MIN_SEGMENT_SECONDS`` window of the mix is
    silent (RMS at or below ``SILENCE_DB``), never cut before sample ``min_end`` (the last
    note-off); ``None`` when a silent window remains (a rest in every part): such a piece is
    dropped."""
    mix = pcm["mix"].astype(np.float64) / 32768
    window = round(MIN_SEGMENT_SECONDS * sample_rate)
    if len(mix) < window:
        return None
    power = np.concatenate([[0.0], np.cumsum(mix**2)])
    loud = np.sqrt((power[window:] - power[:-window]) / window) > 10 ** (SILENCE_DB / 20)
    if not loud.any():
        return None
    end = min(len(mix), max(int(np.flatnonzero(loud)[-1]) + window, min_end))
    if not loud[: end - window + 1].all():
        return None
    return {name: audio[:end] for name, audio in pcm.items()}


def make_example(spec: ExampleSpec) -> Example | None:
    """Arrange, render and encode the example ``spec`` (needs :func:`init_worker` first);
    ``None`` when its audio has a silent stretch (see :func:`trim_silent_tail`)."""
    if _renderer is None:
        raise RuntimeError("init_worker() must run before make_example()")
    rng = np.random.default_rng([spec.seed, spec.index, 1])
    piece, style = spec.piece, STYLES[spec.piece.style]
    notation = load_notation(piece.source)
    arrangement = arrange(piece, notation, rng)
    buffer = io.BytesIO()
    arrangement.midi.write(buffer)
    midi_bytes = buffer.getvalue()
    # Render the notes exactly as stored (tick-quantised), so audio and MIDI agree.
    stored = pretty_midi.PrettyMIDI(io.BytesIO(midi_bytes))
    sample_rate = _renderer.sample_rate
    last_note_off = int(np.ceil(stored.get_end_time() * sample_rate))
    pcm = trim_silent_tail(_render_stems(stored, _renderer), sample_rate, last_note_off)
    if pcm is None:
        return None
    seconds = len(pcm["mix"]) / sample_rate
    programs = [i["program"] for i in arrangement.instruments if not i["is_drum"]]
    has_drums = any(i["is_drum"] for i in arrangement.instruments)
    caption, tags = describe(
        period=style.period,
        genre=piece.genre,
        composer=piece.composer,
        composer_tag=piece.composer_tag,
        instruments=instrument_words(programs, has_drums),
        key=arrangement.key,
        bpm=arrangement.tempo,
        rng=rng,
    )
    meta = {
        "duration": seconds,
        "sample_rate": sample_rate,
        "caption": caption,
        "tags": tags,
        "instruments": arrangement.instruments,
        "composer": piece.composer,
        "period": style.period,
        "genre": piece.genre,
        "tempo": arrangement.tempo,
        "key": arrangement.key,
        "transpose": arrangement.transpose,
        "source": piece.source,
        "title": notation.title,
        "piece": piece.piece_id,
        "split": spec.split,
        "seed": spec.seed,
        "index": spec.index,
        "soundfont": _renderer.soundfont.name,
    }
    members = {f"{stem}.flac": flac_bytes(pcm[stem], sample_rate) for stem in STEMS}
    members |= {
        "flac": flac_bytes(pcm["mix"], sample_rate),
        "mid": midi_bytes,
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    return Example(spec.key, spec.split, members, seconds)
