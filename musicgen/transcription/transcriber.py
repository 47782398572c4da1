"""Audio in, MIDI out: ``Transcriber.from_checkpoint(path).transcribe(wav, sr)``.

A track is resampled to 16 kHz mono, cut into 256-frame segments (MT3's padding, see
:mod:`musicgen.transcription.frontend`), the segments are decoded greedily in batches and
their tokens stitched by segment start time with ties (:func:`stitch_segments`). Notes keep
the decoded programs; drum hits go to a drum instrument (MIDI channel 10).

Checkpoints: a directory (or its ``model.safetensors``) with ``config.json`` beside the
weights, as written by :meth:`Transcriber.save`; a ``.ckpt`` of ``train.py`` with
``solver=mt3`` (read with ``torch.load(weights_only=True)``); or a ``.npz`` of flattened
t5x parameters of an official MT3 checkpoint (see :func:`model_from_t5x`).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pretty_midi
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from musicgen.audio import convert_audio
from musicgen.checkpoint_io import check_solver, first_line, load_lightning_checkpoint
from musicgen.errors import UserError
from musicgen.notes import notes_to_midi
from musicgen.transcription.frontend import LogMelFrontend, split_track
from musicgen.transcription.model import MT3Config, MT3Model, model_from_t5x
from musicgen.transcription.segments import SAMPLE_RATE, segment_origin_times, stitch_segments
from musicgen.transcription.tokenize import DecodedNotes
from musicgen.transcription.vocabulary import Granularity

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SOLVER_PREFIX = "model."  # parameter prefix of the model inside solvers.transcription.MT3Solver


def transcribe_track(
    model: MT3Model,
    frontend: LogMelFrontend,
    samples: torch.Tensor,
    batch_size: int = 32,
    max_length: int = 1024,
    use_cache: bool = True,
    grammar: Granularity | None = None,
) -> DecodedNotes:
    """Notes of a mono 16 kHz track ``(N,)``: segments decoded in batches, then stitched;
    ``grammar``: see :meth:`MT3Model.greedy_decode`."""
    segments, frames = split_track(samples)
    device = next(model.parameters()).device
    tokens = []
    for start in range(0, len(segments), batch_size):
        inputs = frontend(
            segments[start : start + batch_size].to(device), frames[start : start + batch_size]
        )
        tokens += list(model.generate(inputs, max_length, use_cache, grammar).cpu().numpy())
    return stitch_segments(tokens, segment_origin_times(len(tokens)))


def _load_ckpt(path: Path) -> MT3Model:
    state = load_lightning_checkpoint(path, fix="pass a .ckpt of train.py solver=mt3")
    check_solver(state, path, ("mt3",))
    try:
        cfg = MT3Config.from_dict(state["hyper_parameters"]["model"])
        weights = {
            k[len(SOLVER_PREFIX) :]: v
            for k, v in state["state_dict"].items()
            if k.startswith(SOLVER_PREFIX)
        }
        model = MT3Model(cfg)
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(
            f"{path} is not a checkpoint of train.py solver=mt3 ({first_line(err)}): "
            "pass one of its .ckpt files"
        ) from None
    return model


def _load_exported(weights: Path) -> MT3Model:
    config = weights.parent / CONFIG_FILE
    if not config.is_file():
        raise UserError(
            f"no {config} beside {weights}: export the model with Transcriber.save(directory)"
        )
    try:
        model = MT3Model(MT3Config.from_dict(json.loads(config.read_text())))
        model.load_state_dict(load_file(weights))
    except (SafetensorError, ValueError, TypeError, KeyError, RuntimeError, OSError) as err:
        raise UserError(
            f"the exported model {weights} with {config} cannot be loaded ({first_line(err)}): "
            "export it again with Transcriber.save(directory)"
        ) from None
    return model


def _load_t5x(path: Path) -> MT3Model:
    try:
        with np.load(path, allow_pickle=False) as params:
            return model_from_t5x(dict(params))
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(
            f"{path} is not a readable .npz of MT3 t5x parameters ({first_line(err)}): "
            "convert the official checkpoint again"
        ) from None


class Transcriber:
    """An :class:`MT3Model` with its front end and decoding settings (``grammar``: the program
    granularity to constrain decoding with, see :meth:`MT3Model.greedy_decode`)."""

    def __init__(
        self,
        model: MT3Model,
        batch_size: int = 32,
        max_length: int = 1024,
        grammar: Granularity | None = None,
    ) -> None:
        self.model = model.eval()
        self.frontend = LogMelFrontend().to(next(model.parameters()).device)
        self.batch_size, self.max_length, self.grammar = batch_size, max_length, grammar

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **kwargs) -> Transcriber:
        """Load an exported directory, a ``model.safetensors``, a train.py ``.ckpt`` or a t5x ``.npz``."""
        path = Path(path)
        if path.is_dir():
            path = path / WEIGHTS_FILE
        if not path.is_file():
            raise UserError(
                f"checkpoint {path} does not exist: pass an exported model directory or a .ckpt of train.py"
            )
        if path.suffix == ".ckpt":
            model = _load_ckpt(path)
        elif path.suffix == ".safetensors":
            model = _load_exported(path)
        elif path.suffix == ".npz":
            model = _load_t5x(path)
        else:
            raise UserError(
                f"unknown checkpoint type {path.suffix!r} of {path}: use .ckpt, .safetensors or .npz"
            )
        return cls(model.to(device), **kwargs)

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``; returns it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.model.state_dict().items()}, out / WEIGHTS_FILE
        )
        (out / CONFIG_FILE).write_text(json.dumps(self.model.config.to_dict(), indent=2) + "\n")
        return out

    def transcribe_notes(
        self, wav: np.ndarray | torch.Tensor, sample_rate: int, use_cache: bool = True
    ) -> DecodedNotes:
        """Decoded notes (seconds) of audio ``(samples,)`` or ``(channels, samples)``."""
        audio = torch.as_tensor(np.asarray(wav, dtype=np.float32))
        audio = audio[None] if audio.dim() == 1 else audio
        mono = convert_audio(audio, sample_rate, SAMPLE_RATE, 1)[0]
        return transcribe_track(
            self.model,
            self.frontend,
            mono,
            self.batch_size,
            self.max_length,
            use_cache,
            self.grammar,
        )

    def transcribe(
        self, wav: np.ndarray | torch.Tensor, sample_rate: int
    ) -> pretty_midi.PrettyMIDI:
        """A MIDI file of the audio: one instrument per (program, drum), drums on channel 10."""
        midi = notes_to_midi(self.transcribe_notes(wav, sample_rate).notes)
        for instrument in midi.instruments:
            instrument.name = (
                "Drums"
                if instrument.is_drum
                else pretty_midi.program_to_instrument_name(instrument.program)
            )
        return midi
