"""Text captions and tags built from an example's metadata, worded by one of several templates."""

from __future__ import annotations

import numpy as np

_MOODS = {
    ("major", "slow"): ("calm", "peaceful", "serene", "tender"),
    ("major", "moderate"): ("warm", "gentle", "graceful", "bright"),
    ("major", "fast"): ("lively", "cheerful", "joyful", "energetic"),
    ("minor", "slow"): ("melancholic", "somber", "mournful", "solemn"),
    ("minor", "moderate"): ("wistful", "pensive", "brooding", "bittersweet"),
    ("minor", "fast"): ("dramatic", "urgent", "restless", "stormy"),
}
_TEMPO_WORDS = {
    "slow": ("slow", "unhurried"),
    "moderate": ("moderate", "steady"),
    "fast": ("fast", "brisk"),
}
_TEMPLATES = (
    "{a_mood} {period} {genre} for {instruments} in {key}, {bpm} bpm",
    "{period} {genre} {attribution}, arranged for {instruments}: {pace} and {mood}, {key}, {bpm} bpm",
    "{mood}, {pace} {period} {genre} played by {instruments} ({key}, {bpm} BPM)",
    "instrumental {period} {genre} in {key} at {bpm} bpm with {instruments}; {mood} mood",
    "{instruments} play a {pace} {genre} in {key}, {mood} in character, around {bpm} beats per minute",
)


def tempo_class(bpm: float) -> str:
    return "slow" if bpm < 76 else "moderate" if bpm < 112 else "fast"


def join_words(words: list[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def describe(
    *,
    period: str,
    genre: str,
    composer: str,
    composer_tag: str,
    instruments: list[str],
    key: str,
    bpm: int,
    rng: np.random.Generator,
) -> tuple[str, list[str]]:
    """A caption and tags for one example; wording and mood synonyms are drawn from ``rng``."""
    mode, speed = key.rsplit(" ", 1)[1], tempo_class(bpm)
    mood = str(rng.choice(_MOODS[mode, speed]))
    fields = {
        "period": period,
        "genre": genre,
        "attribution": "from the traditional repertoire"
        if composer == "traditional"
        else f"by {composer}",
        "instruments": join_words(instruments),
        "key": key,
        "bpm": bpm,
        "mood": mood,
        "a_mood": f"{'an' if mood[0] in 'aeiou' else 'a'} {mood}",
        "pace": str(rng.choice(_TEMPO_WORDS[speed])),
    }
    caption = str(rng.choice(_TEMPLATES)).format(**fields)
    tags = [period.lower(), genre, composer_tag, mood, speed, mode, *instruments]
    return caption, list(dict.fromkeys(tags))
