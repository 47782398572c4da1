"""Audio in, MIDI out: ``Transcriber.from_checkpoint(path).transcribe(wav, sr)``.

A track is resampled to 16 kHz mono, cut into segments of the model type's length (MT3's
padding, see :mod:`musicgen.transcription.frontend`), the segments are decoded greedily in
batches and their tokens stitched by segment start time (:func:`stitch_segments`). Notes keep
the decoded programs; drum hits go to a drum instrument (MIDI channel 10).

Model types (:data:`MODEL_TYPES`, as magenta/mt3's ``gin/mt3.gin`` and ``gin/ismir2021.gin``
configure them): ``mt3``, multi-instrument, 256-frame segments, ties, 1 velocity bin,
vocabulary 1536; ``ismir2021``, the piano model of Hawthorne et al. 2021, 512-frame segments,
no ties, 127 velocity bins, ``flat`` programs, vocabulary 1664. A checkpoint's type is read
from its vocabulary size unless given.

Checkpoints: a directory (or its ``model.safetensors``) with ``config.json`` beside the
weights, as written by :meth:`Transcriber.save`; a ``.ckpt`` of ``train.py`` with
``solver=mt3`` (read with ``torch.load(weights_only=True)``); a t5x checkpoint directory as
released for MT3 (:meth:`Transcriber.from_pretrained`); or a ``.npz`` of flattened t5x
parameters (see :func:`model_from_t5x`).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pretty_midi
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from musicgen.audio import convert_audio
from musicgen.checkpoint_io import check_solver, first_line, load_lightning_checkpoint
from musicgen.errors import UserError
from musicgen.notes import merge_repeated_onsets, notes_to_midi
from musicgen.transcription.frontend import LogMelFrontend, split_track
from musicgen.transcription.grammar import GrammarSpec, segment_max_shift
from musicgen.transcription.model import MT3Config, MT3Model, model_from_t5x
from musicgen.transcription.segments import (
    SAMPLE_RATE,
    SEGMENT_FRAMES,
    segment_origin_times,
    stitch_segments,
)
from musicgen.transcription.t5x_checkpoint import CHECKPOINT_FILE
from musicgen.transcription.tokenize import DecodedNotes
from musicgen.transcription.vocabulary import MT3_CODEC, Codec, Granularity

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SOLVER_PREFIX = "model."  # parameter prefix of the model inside solvers.transcription.MT3Solver


@dataclass(frozen=True)
class ModelType:
    """How a model's tokens and segments are laid out (see the module docstring)."""

    name: str
    codec: Codec
    segment_frames: int
    ties: bool
    granularity: Granularity

    def grammar(self, granularity: Granularity) -> GrammarSpec:
        """The token format of this type's targets under ``granularity``, for constrained
        decoding; shifts are bounded by the segment in the piano format only (MT3's grammar
        stays as it was)."""
        bound = None if self.ties else segment_max_shift(self.segment_frames)
        return GrammarSpec(granularity, self.codec, self.ties, bound)


MODEL_TYPES: dict[str, ModelType] = {
    "mt3": ModelType("mt3", MT3_CODEC, SEGMENT_FRAMES, True, "full"),
    "ismir2021": ModelType("ismir2021", Codec(num_velocity_bins=127), 512, False, "flat"),
}


def model_type_of(model: MT3Model, name: str | None = None) -> ModelType:
    """The model type called ``name``, or the one whose vocabulary size the model has."""
    if name is not None:
        if name not in MODEL_TYPES:
            raise UserError(f"unknown model type {name!r}: use one of {sorted(MODEL_TYPES)}")
        kind = MODEL_TYPES[name]
    else:
        sizes = {kind.codec.vocab_size: kind for kind in MODEL_TYPES.values()}
        kind = sizes.get(model.config.vocab_size, MODEL_TYPES["mt3"])
    if model.config.vocab_size < kind.codec.vocab_size:
        raise UserError(
            f"the model's vocabulary of {model.config.vocab_size} ids is smaller than the "
            f"{kind.codec.vocab_size} of model type {kind.name!r}: pass the model type it was "
            "trained for"
        )
    return kind


def transcribe_track(
    model: MT3Model,
    frontend: LogMelFrontend,
    samples: torch.Tensor,
    batch_size: int = 32,
    max_length: int = 1024,
    use_cache: bool = True,
    grammar: Granularity | None = None,
    model_type: ModelType = MODEL_TYPES["mt3"],
    merge_repeats: float = 0.0,
    min_onset_probability: float = 0.0,
) -> DecodedNotes:
    """Notes of a mono 16 kHz track ``(N,)``: segments of the model type decoded in batches,
    then stitched; ``grammar``: the program granularity to constrain decoding with in the
    type's token format (:meth:`ModelType.grammar`, :meth:`MT3Model.greedy_decode`).
    Not MT3 (0 is MT3's decoding): ``min_onset_probability`` > 0 leaves out the onsets the
    model gave less than that probability (:class:`NoteDecoder`); ``merge_repeats`` > 0
    (seconds) then merges each run of same-pitch onsets less than that apart into one note
    (:func:`~musicgen.notes.merge_repeated_onsets`)."""
    segments, frames = split_track(samples, model_type.segment_frames)
    spec = None if grammar is None else model_type.grammar(grammar)
    device = next(model.parameters()).device
    scored = min_onset_probability > 0
    tokens, log_probs = [], []
    for start in range(0, len(segments), batch_size):
        inputs = frontend(
            segments[start : start + batch_size].to(device), frames[start : start + batch_size]
        )
        out = model.generate(inputs, max_length, use_cache, spec, with_log_probs=scored)
        if scored:
            out, scores = out
            log_probs += list(scores.cpu().numpy())
        tokens += list(out.cpu().numpy())
    origins = segment_origin_times(len(tokens), model_type.segment_frames)
    decoded = stitch_segments(
        tokens,
        origins,
        codec=model_type.codec,
        ties=model_type.ties,
        log_probs=log_probs if scored else None,
        min_onset_probability=min_onset_probability,
    )
    return replace(decoded, notes=merge_repeated_onsets(decoded.notes, merge_repeats))


def _load_ckpt(path: Path) -> MT3Model:
    state = load_lightning_checkpoint(path, fix="pass a .ckpt of train.py solver=mt3")
    check_solver(state, path, ("mt3",))
    try:
        hparams = state["hyper_parameters"]
        kind = MODEL_TYPES[hparams.get("model_type", "mt3")]
        cfg = MT3Config.from_dict({"vocab_size": kind.codec.vocab_size, **hparams["model"]})
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
    granularity to constrain decoding with in the model type's token format,
    ``merge_repeats``, seconds within which same-pitch onsets merge, and
    ``min_onset_probability``, below which onsets are left out, see :func:`transcribe_track`;
    ``model_type``: a name in :data:`MODEL_TYPES`, by default read from the vocabulary size)."""

    def __init__(
        self,
        model: MT3Model,
        batch_size: int = 32,
        max_length: int = 1024,
        grammar: Granularity | None = None,
        model_type: str | None = None,
        merge_repeats: float = 0.0,
        min_onset_probability: float = 0.0,
    ) -> None:
        self.model = model.eval()
        self.model_type = model_type_of(model, model_type)
        self.frontend = LogMelFrontend().to(next(model.parameters()).device)
        self.batch_size, self.max_length, self.grammar = batch_size, max_length, grammar
        self.merge_repeats, self.min_onset_probability = merge_repeats, min_onset_probability

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu", **kwargs) -> Transcriber:
        """Load a t5x checkpoint directory of MT3 (:meth:`MT3Model.from_t5x`); ``kwargs`` go to
        the constructor (``model_type`` defaults to the one of the checkpoint's vocabulary)."""
        return cls(MT3Model.from_t5x(directory).to(device), **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **kwargs) -> Transcriber:
        """Load an exported directory, a ``model.safetensors``, a train.py ``.ckpt``, a t5x
        checkpoint directory or a t5x ``.npz``."""
        path = Path(path)
        if (path.is_dir() and (path / CHECKPOINT_FILE).is_file()) or path.name == CHECKPOINT_FILE:
            return cls.from_pretrained(path, device, **kwargs)
        if path.is_dir():
            path = path / WEIGHTS_FILE
        if not path.is_file():
            raise UserError(
                f"checkpoint {path} does not exist: pass an exported model directory, a .ckpt of "
                "train.py or a t5x checkpoint directory"
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
            self.model_type,
            self.merge_repeats,
            self.min_onset_probability,
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
