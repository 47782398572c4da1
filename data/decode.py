"""Decoding and cropping one raw sample into tensors, or rejecting it with a reason.

Only known member types are decoded: audio through ``soundfile``, ``json`` with the ``json``
module, ``mid`` with ``pretty_midi``. Everything else in a sample is ignored, so nothing in a
shard can make the loader execute code.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch

from data.shards import STEMS
from data.tar_reader import RawSample
from musicgen.audio import convert_audio, fit_length
from musicgen.notes import crop_notes, notes_from_midi_bytes, trim_overlapping_notes, window_notes

AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")
FIELDS = ("audio", "stems", "notes", "caption")
CROP_MODES = ("random", "start", "center", "none")


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is one of the counted skip reasons."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


SILENCE_DB = -70.0  # crops whose mix RMS is at or below this (dBFS) are skipped as silent
# MT3 rounds note times to 10 ms steps counted from the crop start rounded down, so an onset or
# offset up to 15 ms before a crop can belong to its target: crops keep notes from 20 ms before.
NOTE_LEAD_SECONDS = 0.02


@dataclass(frozen=True)
class SampleSpec:
    """What a solver wants from each sample.

    ``segment_seconds`` is the crop length (``None`` with ``crop="none"`` keeps whole files);
    ``crop`` picks the crop position: ``random`` for training, ``start``/``center`` for
    deterministic evaluation crops. Mixes quieter than ``silence_db`` (RMS, dBFS) are skipped.
    """

    sample_rate: int
    channels: int = 1
    segment_seconds: float | None = None
    fields: tuple[str, ...] = ("audio",)
    crop: str = "random"
    silence_db: float = SILENCE_DB

    def __post_init__(self) -> None:
        unknown = set(self.fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown sample fields {sorted(unknown)}; choose from {list(FIELDS)}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"unknown crop mode {self.crop!r}; choose from {list(CROP_MODES)}")
        if self.crop != "none" and not (self.segment_seconds and self.segment_seconds > 0):
            raise ValueError(f"crop={self.crop!r} needs a positive segment_seconds")


def _open_audio(data: bytes, what: str) -> sf.SoundFile:
    try:
        return sf.SoundFile(io.BytesIO(data))
    except Exception as err:  # libsndfile reports corrupt data through several exception types
        raise SkipSample("undecodable_audio", f"{what}: {err}") from err


def _read_frames(
    audio: sf.SoundFile, start: int, frames: int, what: str
) -> tuple[np.ndarray, float]:
    """``frames`` frames from ``start`` as (channels, frames) float32, and their mean square."""
    try:
        audio.seek(start)
        data = audio.read(frames, dtype="float32", always_2d=True)
    except Exception as err:
        raise SkipSample("undecodable_audio", f"{what}: {err}") from err
    if data.shape[0] != frames:
        raise SkipSample("undecodable_audio", f"{what}: got {data.shape[0]} of {frames} frames")
    flat = data.reshape(-1)
    mean_square = float(np.dot(flat, flat)) / max(
        flat.size, 1
    )  # NaN/Inf anywhere make this non-finite
    if not math.isfinite(mean_square):
        raise SkipSample("non_finite", f"{what} contains NaN or Inf")
    return (
        data.reshape(1, -1) if data.shape[1] == 1 else np.ascontiguousarray(data.T)
    ), mean_square


def _crop_window(total: int, wanted: int, crop: str, rng: np.random.Generator) -> tuple[int, int]:
    if crop == "none":
        return 0, total
    if total < wanted:
        raise SkipSample("too_short", f"{total} frames, segment needs {wanted}")
    if crop == "random":
        return int(rng.integers(0, total - wanted + 1)), wanted
    if crop == "center":
        return (total - wanted) // 2, wanted
    return 0, wanted


def _audio_member(raw: RawSample) -> str:
    for ext in AUDIO_EXTENSIONS:
        if ext in raw:
            return ext
    raise SkipSample("missing_member", f"no audio member (.{'/.'.join(AUDIO_EXTENSIONS)})")


def _metadata(raw: RawSample, required: bool) -> dict:
    if "json" not in raw:
        if required:
            raise SkipSample("missing_member", "no .json member")
        return {}
    try:
        meta = json.loads(raw["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SkipSample("malformed_json", str(err)) from err
    if not isinstance(meta, dict):
        raise SkipSample("malformed_json", "top level is not an object")
    return meta


def wanted_members(spec: SampleSpec) -> Callable[[str], bool]:
    """A filter on member extensions: only what ``spec`` decodes is read from the tar."""
    wanted = {*AUDIO_EXTENSIONS, "json"}
    if "notes" in spec.fields:
        wanted.add("mid")
    if "stems" in spec.fields:
        wanted |= {f"{stem}.{ext}" for stem in STEMS for ext in AUDIO_EXTENSIONS}
    return wanted.__contains__


def cut_notes(notes: np.ndarray, start: int, frames: int, rate: int, crop: str) -> np.ndarray:
    """The notes of a crop in track time. A whole file (``crop="none"``) keeps its notes as
    they are, clipped to the audio; a crop keeps them unclipped after trimming same-pitch
    overlaps over the whole track (MT3's training cleanup, done before cutting as MT3 does),
    with :data:`NOTE_LEAD_SECONDS` of notes before it."""
    t0, t1 = start / rate, (start + frames) / rate
    if crop == "none":
        return crop_notes(notes, t0, t1)
    return window_notes(trim_overlapping_notes(notes), t0, t1, lead=NOTE_LEAD_SECONDS)


def decode_sample(raw: RawSample, spec: SampleSpec, rng: np.random.Generator) -> dict:
    """Turn a raw sample into ``{"key", "audio", "start", ["stems"], ["notes"], ["caption"], "meta"}``.

    Audio is cut to the spec's segment (stems and notes at the same position), converted to the
    spec's rate and channels; ``start`` is the crop's start time in the file, in seconds, and
    ``notes`` are in track time (see :func:`cut_notes`). Raises :class:`SkipSample` for any
    unusable sample.
    """
    meta = _metadata(raw, required="caption" in spec.fields)
    audio_ext = _audio_member(raw)
    mix = _open_audio(raw[audio_ext], f".{audio_ext}")
    native_rate = mix.samplerate
    wanted = round(spec.segment_seconds * native_rate) if spec.segment_seconds else mix.frames
    start, frames = _crop_window(mix.frames, wanted, spec.crop, rng)
    mix_frames, mean_square = _read_frames(mix, start, frames, f".{audio_ext}")
    rms = math.sqrt(mean_square)
    if rms <= 10 ** (spec.silence_db / 20):
        level = 20 * math.log10(rms) if rms > 0 else -math.inf
        raise SkipSample("silent", f"mix RMS {level:.1f} dBFS")
    length = round(frames * spec.sample_rate / native_rate)

    def to_tensor(frames_array: np.ndarray) -> torch.Tensor:
        wav = convert_audio(
            torch.from_numpy(frames_array), native_rate, spec.sample_rate, spec.channels
        )
        return fit_length(wav, length)

    out: dict = {
        "key": raw["__key__"],
        "audio": to_tensor(mix_frames),
        "start": start / native_rate,
        "meta": meta,
    }
    if "stems" in spec.fields:
        stems = []
        for stem in STEMS:
            ext = f"{stem}.{audio_ext}"
            if ext not in raw:
                raise SkipSample("missing_member", f"no .{ext} member")
            stem_file = _open_audio(raw[ext], f".{ext}")
            if stem_file.frames != mix.frames or stem_file.samplerate != native_rate:
                raise SkipSample("misaligned_stems", f".{ext} does not match the mix")
            stems.append(to_tensor(_read_frames(stem_file, start, frames, f".{ext}")[0]))
        out["stems"] = torch.stack(stems)
    if "notes" in spec.fields:
        if "mid" not in raw:
            raise SkipSample("missing_member", "no .mid member")
        try:
            notes = notes_from_midi_bytes(raw["mid"])
        except ValueError as err:
            raise SkipSample("malformed_midi", str(err)) from err
        out["notes"] = torch.from_numpy(cut_notes(notes, start, frames, native_rate, spec.crop))
    if "caption" in spec.fields:
        caption = meta.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise SkipSample("missing_member", "json has no caption")
        out["caption"] = caption
    return out
