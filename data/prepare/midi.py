"""MIDI helpers shared by dataset preparers: sustain pedal as MT3 applies it, and writing notes.

:func:`sustained_tracks` re-derives ``note_seq.apply_sustain_control_changes``, which MT3 runs
on every reference before tokenising (MAESTRO) or on every stem (Slakh): per instrument, events
are processed in time order (pedal down, pedal up, note-on, note-off at equal times); CC 64
values >= 64 press the pedal. A note released while the pedal is down lasts until the pedal is
lifted or the same pitch is struck again (a re-struck note starting at that same instant
replaces it); notes still held by the pedal when the events run out end at the last event
time. Drum notes are left as they are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pretty_midi

from musicgen.notes import END, IS_DRUM, PITCH, PROGRAM, START, VELOCITY, empty_notes

SUSTAIN_CONTROL = 64
PEDAL_DOWN, PEDAL_UP, NOTE_ON, NOTE_OFF = range(4)  # processing order at equal times
WRITE_RESOLUTION = 960  # ticks per quarter at 120 bpm: 0.52 ms ticks


def read_midi(path: Path) -> pretty_midi.PrettyMIDI:
    """Parse a MIDI file; ``ValueError`` naming the file when it is missing or malformed."""
    try:
        return pretty_midi.PrettyMIDI(str(path))
    except Exception as err:  # mido raises several unrelated types on corrupt files
        raise ValueError(f"unreadable MIDI {path}: {err}") from err


def _notes(instrument: pretty_midi.Instrument) -> np.ndarray:
    if not instrument.notes:
        return empty_notes()
    rows = [
        (n.start, n.end, n.pitch, n.velocity, instrument.program, float(instrument.is_drum), 0, 0)
        for n in instrument.notes
    ]
    return np.asarray(rows, dtype=np.float64)


def sustained_tracks(midi: pretty_midi.PrettyMIDI) -> list[np.ndarray]:
    """Note arrays of the instruments of ``midi`` (same order), sustain pedal applied."""
    tracks = [_notes(inst) for inst in midi.instruments]
    events = []
    for t, (inst, notes) in enumerate(zip(midi.instruments, tracks, strict=True)):
        if inst.is_drum:
            continue
        events += [(n[START], NOTE_ON, t, i) for i, n in enumerate(notes)]
        events += [(n[END], NOTE_OFF, t, i) for i, n in enumerate(notes)]
        events += [
            (cc.time, PEDAL_DOWN if cc.value >= 64 else PEDAL_UP, t, -1)
            for cc in inst.control_changes
            if cc.number == SUSTAIN_CONTROL
        ]
    events.sort(key=lambda e: (e[0], e[1]))
    active: dict[int, list[int]] = {t: [] for t in range(len(tracks))}
    pedal = dict.fromkeys(range(len(tracks)), False)
    removed: set[tuple[int, int]] = set()
    now = 0.0
    for now, kind, t, i in events:
        notes = tracks[t]
        if kind == PEDAL_DOWN:
            pedal[t] = True
        elif kind == PEDAL_UP:
            pedal[t] = False
            for j in [j for j in active[t] if notes[j, END] < now]:
                notes[j, END] = now
                active[t].remove(j)
        elif kind == NOTE_ON:
            if pedal[t]:
                for j in [j for j in active[t] if notes[j, PITCH] == notes[i, PITCH]]:
                    notes[j, END] = now
                    active[t].remove(j)
                    if notes[j, START] == now:
                        removed.add((t, j))
            active[t].append(i)
        elif kind == NOTE_OFF and not pedal[t] and i in active[t]:
            active[t].remove(i)
    for t, held in active.items():
        tracks[t][held, END] = now
    return [
        np.delete(notes, [i for (t2, i) in removed if t2 == t], axis=0)
        for t, notes in enumerate(tracks)
    ]


def midi_bytes(tracks: Sequence[np.ndarray]) -> bytes:
    """A MIDI file with one instrument per note array (its program and drum flag taken from
    the first note; empty arrays are skipped), at 0.52 ms time resolution."""
    midi = pretty_midi.PrettyMIDI(resolution=WRITE_RESOLUTION, initial_tempo=120.0)
    for notes in tracks:
        if len(notes) == 0:
            continue
        inst = pretty_midi.Instrument(
            program=int(notes[0, PROGRAM]), is_drum=bool(notes[0, IS_DRUM])
        )
        inst.notes = [
            pretty_midi.Note(int(n[VELOCITY]), int(n[PITCH]), float(n[START]), float(n[END]))
            for n in notes
        ]
        midi.instruments.append(inst)
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()
