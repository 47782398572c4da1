"""MusicGen conditions: text (frozen HF encoder) and melody (chroma of the stemmed input),
projected to the LM width and concatenated into the prefix prepended to the decoder input.
The chroma cache is ``musicgen.conditioners.chroma_cache`` (built by ``python -m data.chroma_cache``)."""

from musicgen.conditioners.chroma import ChromaExtractor
from musicgen.conditioners.melody import MelodyConditioner, fit_frames
from musicgen.conditioners.provider import ConditionProvider
from musicgen.conditioners.stemmers import (
    STEMMERS,
    DemucsStemmer,
    NoStemmer,
    OracleStemmer,
    Stemmer,
    build_stemmer,
)
from musicgen.conditioners.text import TextConditioner

__all__ = [
    "STEMMERS",
    "ChromaExtractor",
    "ConditionProvider",
    "DemucsStemmer",
    "MelodyConditioner",
    "NoStemmer",
    "OracleStemmer",
    "Stemmer",
    "TextConditioner",
    "build_stemmer",
    "fit_frames",
]
