"""Deterministic FluidSynth rendering of stems, their common gain, and FLAC encoding.

``pyfluidsynth``'s ``get_samples`` writes dithered 16-bit audio whose dither state carries over
between calls, so this renders 32-bit float through ``fluid_synth_write_float`` instead, with
reverb and chorus off. A synth that has played keeps tiny internal state even after a system
reset, so every stem gets a fresh synth; the worker's first synth keeps the soundfont loaded,
and FluidSynth's sample cache lets the fresh synths share its samples instead of re-reading
the file.
"""

from __future__ import annotations

import ctypes
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pretty_midi
import soundfile as sf

FLUID_R3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
PEAK_DBFS = -1.0
DRUM_CHANNEL = 9
_MELODIC_CHANNELS = [c for c in range(16) if c != DRUM_CHANNEL]


def find_soundfont() -> Path:
    """FluidR3_GM when installed (Debian ``fluid-soundfont-gm``), else pretty_midi's TimGM6mb."""
    path = FLUID_R3 if FLUID_R3.exists() else Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.exists():
        raise FileNotFoundError(
            f"no soundfont: install fluid-soundfont-gm ({FLUID_R3}) or pretty_midi"
        )
    return path


def load_fluidsynth():
    """The ``fluidsynth`` module with ``fluid_synth_write_float``'s C signature declared; a
    one-line ``FileNotFoundError`` when FluidSynth is missing."""
    try:
        import fluidsynth  # late: importing it loads libfluidsynth
    except ImportError as err:
        raise FileNotFoundError(
            f"FluidSynth is unavailable ({err}): install libfluidsynth3 and pyfluidsynth"
        ) from err
    write = fluidsynth._fl.fluid_synth_write_float
    write.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    write.argtypes += [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    write.restype = ctypes.c_int
    return fluidsynth


class Renderer:
    """Renders lists of ``pretty_midi`` instruments to mono float audio at one sample rate."""

    def __init__(self, soundfont: Path, sample_rate: int) -> None:
        self._fs = load_fluidsynth()
        self.soundfont, self.sample_rate = soundfont, sample_rate
        self._keeper, _ = self._new_synth()  # holds the soundfont in the sample cache

    def _new_synth(self):
        settings = {"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.cpu-cores": 1}
        synth = self._fs.Synth(gain=0.2, samplerate=float(self.sample_rate), **settings)
        sfid = synth.sfload(str(self.soundfont))
        if sfid < 0:
            raise FileNotFoundError(f"FluidSynth cannot load the soundfont {self.soundfont}")
        return synth, sfid

    def _write(self, synth, out: np.ndarray, start: int, stop: int) -> None:
        """Render frames ``[start, stop)`` of the stereo float buffer ``out``."""
        if stop > start:
            pointer = out[start:].ctypes.data
            self._fs._fl.fluid_synth_write_float(
                synth.synth, stop - start, pointer, 0, 2, pointer, 1, 2
            )

    def render(self, instruments: Sequence[pretty_midi.Instrument], num_samples: int) -> np.ndarray:
        """Mono float64 audio of ``instruments`` (drums on the GM drum channel), ``num_samples`` long."""
        melodic = [i for i in instruments if not i.is_drum]
        if len(melodic) > len(_MELODIC_CHANNELS):
            raise ValueError(
                f"cannot render {len(melodic)} melodic instruments on 15 MIDI channels"
            )
        synth, sfid = self._new_synth()
        events = []  # (frame, 0 = off / 1 = on, channel, pitch, velocity): offs first at a tie
        channels = iter(_MELODIC_CHANNELS)
        for instrument in instruments:
            channel = DRUM_CHANNEL if instrument.is_drum else next(channels)
            synth.program_select(
                channel,
                sfid,
                128 if instrument.is_drum else 0,
                0 if instrument.is_drum else instrument.program,
            )
            for note in instrument.notes:
                events.append(
                    (round(note.start * self.sample_rate), 1, channel, note.pitch, note.velocity)
                )
                events.append((round(note.end * self.sample_rate), 0, channel, note.pitch, 0))
        stereo = np.zeros((num_samples, 2), dtype=np.float32)
        position = 0
        for frame, on, channel, pitch, velocity in sorted(events):
            frame = min(frame, num_samples)
            self._write(synth, stereo, position, frame)
            position = frame
            if on:
                synth.noteon(channel, pitch, velocity)
            else:
                synth.noteoff(channel, pitch)
        self._write(synth, stereo, position, num_samples)
        synth.delete()
        return stereo.astype(np.float64).mean(axis=1)


def common_gain(mix: np.ndarray, stems: Sequence[np.ndarray]) -> float:
    """One gain that brings the mix peak to ``PEAK_DBFS`` without clipping any stem."""
    mix_peak = float(np.abs(mix).max())
    if mix_peak == 0.0:
        raise ValueError("the rendered mix is silent")
    stem_peak = max(float(np.abs(s).max()) for s in stems)
    return min(10 ** (PEAK_DBFS / 20) / mix_peak, 0.999 / stem_peak)


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1) to int16 samples (value / 32768, what ``soundfile`` reads back)."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def flac_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono int16 samples as FLAC (PCM_16) file bytes."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
