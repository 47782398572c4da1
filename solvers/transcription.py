"""``solver=mt3``: MT3 multi-instrument transcription (log-mel frames in, MIDI-like tokens out),
or with ``model_type: ismir2021`` the piano model of Hawthorne et al. 2021 (see
:class:`MT3Solver`).

Training: teacher-forced cross-entropy (plus t5x's z-loss, ``z_loss * logsumexp(logits)^2``)
on random crops of the model type's segment length (256 frames; 512 for the piano model); the targets of a crop come from its notes (in track time) and its
start through :func:`musicgen.transcription.crop_tokens`, on MT3's 10 ms grid. A crop whose
target is longer than ``max_target_length`` is not trained on (MT3 refuses such targets); the
count is logged as ``train/skipped_long_targets`` (per epoch). Validation and test decode
whole pieces (``eval_crop: none``) greedily, stitch the segments and score them with MT3's metrics
(:mod:`musicgen.metrics.transcription`), logged as ``{stage}/<metric>`` (dataset score = mean
over the tracks of all ranks, gathered at the epoch end; the test tables list every track). The first validation piece's piano rolls and transcribed MIDI are written under
``<log dir>/media`` and sent to W&B or TensorBoard when that is the logger.
"""

from __future__ import annotations

import math
from itertools import chain
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure

from musicgen.audio import fit_length
from musicgen.errors import UserError
from musicgen.metrics.transcription import dataset_metrics, track_metrics
from musicgen.notes import END, IS_DRUM, PITCH, PROGRAM, START, notes_to_midi
from musicgen.paths import inside
from musicgen.tables import Table
from musicgen.transcription.frontend import LogMelFrontend, split_track
from musicgen.transcription.model import MT3Config, MT3Model, sinusoidal_embedding
from musicgen.transcription.segments import (
    HOP_LENGTH,
    SAMPLE_RATE,
    crop_tokens,
    notes_to_segment_tokens,
)
from musicgen.transcription.time_pointer import shift_frames
from musicgen.transcription.transcriber import MODEL_TYPES, transcribe_track
from musicgen.transcription.vocabulary import (
    EOS_ID,
    GRANULARITIES,
    MAX_SHIFT_STEPS,
    PAD_ID,
    Granularity,
    token,
)
from solvers.crop_mixing import mix_crops, mix_partners
from solvers.reduction import gather_objects, log_reduced, sync_buffers_for_validation
from solvers.schedules import lr_lambda

NUM_PITCHES = 128

# MT3 paper (arXiv 2111.03017), Table 2 (MT3 single-dataset / mixture models) and Table 3
# (MT3 mixture, multi-instrument F1 per instrument grouping); only datasets we can prepare.
PAPER_TABLE2 = {
    "maestro": {
        "frame_f1": (0.8815, 0.8615),
        "onset_f1": (0.9601, 0.9455),
        "onset_offset_f1": (0.8431, 0.7987),
    },
    "slakh": {
        "frame_f1": (0.7848, 0.7857),
        "onset_f1": (0.7583, 0.7585),
        "onset_offset_f1": (0.5724, 0.5727),
    },
}
PAPER_TABLE3 = {
    "maestro": {"flat": 0.807, "midi_class": 0.8024, "full": 0.8164},
    "slakh": {"flat": 0.4777, "midi_class": 0.6188, "full": 0.5453},
}
PAPER_NAMES = {"maestro": "MAESTRO", "slakh": "Slakh2100"}
TABLE2_ROWS = {"frame_f1": "Frame F1", "onset_f1": "Onset F1", "onset_offset_f1": "Onset+Offset F1"}
TABLE3_ROWS = {"flat": "Flat", "midi_class": "MIDI Class", "full": "Full"}
PAPER_NOTE = (
    "MT3 numbers: arXiv 2111.03017 (the ar5iv rendering of the paper), Table 2 (MT3 trained on "
    "that dataset alone / on the mixture of six datasets) and Table 3 (mixture model). "
    "MT3 reports no drum F1. Ours: mean over the evaluated tracks."
)
# The piano model (model_type ismir2021): Hawthorne et al. 2021, "Sequence-to-Sequence Piano
# Transcription with Transformers" (arXiv 2107.09142), MAESTRO v3 test split. Onset and
# onset+offset F1 are MT3's Table 2 row "Hawthorne et al. (2021)" (arXiv 2111.03017, same group,
# the released ismir2021 model on MAESTRO v3); onset+offset+velocity F1 is not in MT3's table and
# comes from a quote of the 2021 paper (the SORI leaderboard's MAESTRO v3 row, 96.01 / 83.94 /
# 82.75, whose first two equal MT3's): the paper's own text could not be read here.
PAPER_PIANO: dict[str, float | None] = {
    "onset_f1": 0.9601,
    "onset_offset_f1": 0.8394,
    "onset_offset_velocity_f1": 0.8275,
}
PIANO_ROWS = {
    "onset_f1": "Onset F1",
    "onset_offset_f1": "Onset+Offset F1",
    "onset_offset_velocity_f1": "Onset+Offset+Velocity F1",
}
PIANO_NOTE = (
    "Layout of Hawthorne et al. 2021 (arXiv 2107.09142): note F1 by onset, onset and offset, "
    "onset, offset and velocity (mir_eval; velocity via mir_eval.transcription_velocity). "
    "Paper: MAESTRO v3 test split; onset and onset+offset F1 from MT3's Table 2 (arXiv "
    "2111.03017, row Hawthorne et al. (2021)), velocity F1 as quoted from the 2021 paper "
    "(its text was not read here). Ours: mean over the evaluated tracks."
)


@torch.no_grad()
def init_shifts_from_positions(model: MT3Model) -> None:
    """Set the input embedding and output row of each ``shift`` token to the fixed position
    embedding (:func:`sinusoidal_embedding`) of the input frame that holds the time it names
    (:func:`shift_frames`: an onset shows mid-window, 64 ms before the frame that starts at
    its time): an initialisation (the architecture is unchanged) that lets small models learn
    time alignment sooner."""
    steps = torch.arange(MAX_SHIFT_STEPS + 1)
    positions = sinusoidal_embedding(shift_frames(steps), model.config.d_model)
    rows = steps + token("shift", 0)
    model.decoder.token_embedder.weight[rows] = positions
    model.decoder.logits_dense.weight[rows] = positions


def shift_smoothed_nll(logits: torch.Tensor, targets: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-token cross-entropy (the shape of ``targets``) where a ``shift`` target is a Gaussian (``sigma``
    steps of 10 ms, cut at 3 sigma, renormalised within the shift range) over the shift tokens
    around it instead of one-hot: an early or late shift costs less the closer it is.
    Other targets keep the one-hot cross-entropy."""
    log_probs = logits.log_softmax(-1)
    nll = -log_probs.gather(-1, targets[..., None])[..., 0]
    first, last = token("shift", 0), token("shift", MAX_SHIFT_STEPS)
    is_shift = (targets >= first) & (targets <= last)
    if not bool(is_shift.any()):
        return nll
    width = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-width, width + 1, device=targets.device)
    shifted = targets[is_shift][:, None] + offsets
    inside_range = (shifted >= first) & (shifted <= last)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2) * inside_range
    weights = weights / weights.sum(-1, keepdim=True)
    picked = log_probs[is_shift].gather(-1, shifted.clamp(first, last))
    return nll.masked_scatter(is_shift, -(weights * picked).sum(-1))


def crop_rolls(notes: np.ndarray, start: float, num_frames: int) -> np.ndarray:
    """``(2, num_frames, 128)`` float32 targets of a crop starting at ``start`` seconds (notes in
    track time): [0] the frame of each onset (every note, drums included), [1] the frames
    where a pitched note sounds; frame ``f`` is time ``start + f * 8 ms``, as MT3's frames."""
    rolls = np.zeros((2, num_frames, NUM_PITCHES), dtype=np.float32)
    frames_per_second = SAMPLE_RATE / HOP_LENGTH
    first = np.round((notes[:, START] - start) * frames_per_second).astype(int)
    last = np.round((notes[:, END] - start) * frames_per_second).astype(int)
    pitches = notes[:, PITCH].astype(int)
    for on, off, pitch, drum in zip(first, last, pitches, notes[:, IS_DRUM] > 0, strict=True):
        if 0 <= on < num_frames:
            rolls[0, on, pitch] = 1.0
        if not drum:
            rolls[1, max(on, 0) : max(min(off, num_frames), 0), pitch] = 1.0
    return rolls


def _piano_roll_figure(ref: np.ndarray, est: np.ndarray, title: str) -> Figure:
    """Reference above, estimate below; one colour per program, drum hits as dots."""
    fig = Figure(figsize=(12, 6))
    axes = fig.subplots(2, 1, sharex=True, sharey=True)
    for ax, notes, name in zip(axes, (ref, est), ("reference", "estimate"), strict=True):
        pitched = notes[notes[:, IS_DRUM] == 0]
        colours = [f"C{int(p) // 8 % 10}" for p in pitched[:, PROGRAM]]
        ax.hlines(pitched[:, PITCH], pitched[:, START], pitched[:, END], colors=colours, lw=3)
        drums = notes[notes[:, IS_DRUM] > 0]
        ax.plot(drums[:, START], drums[:, PITCH], "k.", ms=3)
        ax.set_ylabel(f"{name}\npitch")
    axes[0].set_title(title)
    axes[1].set_xlabel("time (s)")
    return fig


class MT3Solver(L.LightningModule):
    """Trains and evaluates an :class:`MT3Model`; ``model`` holds :class:`MT3Config` fields,
    ``optim`` the optimiser: ``name`` (``adafactor`` or ``adamw``), ``lr``, an optional linear
    ``warmup_steps``, an optional cosine decay to 0 at ``cosine_steps``, and a section per
    optimiser name with its other keyword arguments.
    ``shift_position_init`` starts training from :func:`init_shifts_from_positions`;
    ``shift_smoothing`` (steps; 0 is MT3's one-hot loss) trains shift targets against
    :func:`shift_smoothed_nll`; ``roll_loss_weight`` > 0 adds an auxiliary loss (not MT3): a
    linear ``roll_head`` on the encoder output predicts each frame's onsets and sounding
    pitches (:func:`crop_rolls`), binary cross-entropy times the weight; the head is used in
    training only and is not part of the transcription model;
    ``timing_loss_weight`` (1 is MT3's plain mean; not MT3) weighs the training loss of
    ``shift`` and ``EOS`` targets, the tokens that place events in time, against the others
    (weighted mean over the targets; validation losses stay unweighted);
    ``mix_probability`` (0 in MT3) is the chance that a training crop gets another crop of its
    batch added, audio and notes (:mod:`solvers.crop_mixing`);
    ``constrained_decoding`` decodes validation and test pieces with the token grammar of the
    model type's format (:mod:`musicgen.transcription.grammar`) instead of plain greedy;
    ``min_onset_probability`` > 0 (0 in MT3) leaves out their note onsets that the model gave
    less than that probability (:class:`~musicgen.transcription.tokenize.NoteDecoder`), then
    ``merge_repeats_ms`` > 0 (0 in MT3) merges their same-pitch onsets less than that apart
    into one note (:func:`~musicgen.notes.merge_repeated_onsets`).

    ``model_type`` (:data:`~musicgen.transcription.transcriber.MODEL_TYPES`) sets the
    vocabulary, segment length, ties and default ``granularity``, as magenta/mt3's
    ``gin/mt3.gin`` and ``gin/ismir2021.gin``: ``mt3`` (256 frames, ties, 1 velocity bin, full
    programs) or ``ismir2021``, the piano model of Hawthorne et al. 2021 (512 frames, no ties,
    127 velocity bins, flat programs, vocabulary 1664), whose evaluation tables are the paper's
    piano layout (:meth:`evaluation_tables`). The model's ``vocab_size`` follows the type unless
    given."""

    def __init__(
        self,
        model: dict,
        optim: dict,
        granularity: str | None = None,
        z_loss: float = 1e-4,
        max_target_length: int = 1024,
        max_decode_length: int = 1024,
        decode_batch_size: int = 32,
        shift_position_init: bool = False,
        shift_smoothing: float = 0.0,
        roll_loss_weight: float = 0.0,
        timing_loss_weight: float = 1.0,
        mix_probability: float = 0.0,
        constrained_decoding: bool = False,
        merge_repeats_ms: float = 0.0,
        min_onset_probability: float = 0.0,
        dataset_name: str = "",
        model_type: str = "mt3",
    ) -> None:
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise UserError(
                f"solver model_type {model_type!r} is unknown: use one of {sorted(MODEL_TYPES)}"
            )
        self.model_type = MODEL_TYPES[model_type]
        granularity = self.model_type.granularity if granularity is None else granularity
        if granularity not in GRANULARITIES:
            raise UserError(
                f"solver granularity {granularity!r} is unknown: use one of {GRANULARITIES}"
            )
        if optim.get("name") not in ("adafactor", "adamw"):
            raise UserError(
                f"solver optim.name {optim.get('name')!r} is unknown: use adafactor or adamw"
            )
        self.save_hyperparameters()
        self.granularity: Granularity = granularity
        self.segment_samples = self.model_type.segment_frames * HOP_LENGTH
        vocab = {"vocab_size": self.model_type.codec.vocab_size}
        self.model = MT3Model(MT3Config.from_dict({**vocab, **model}))
        if self.model.config.vocab_size < vocab["vocab_size"]:
            raise UserError(
                f"solver model.vocab_size={self.model.config.vocab_size} is smaller than the "
                f"{vocab['vocab_size']} ids of model_type {model_type}: leave it out"
            )
        if shift_position_init:
            init_shifts_from_positions(self.model)
        self.roll_head = (
            torch.nn.Linear(self.model.config.d_model, 2 * NUM_PITCHES)
            if roll_loss_weight
            else None
        )
        self.frontend = LogMelFrontend()
        self._tracks: dict[str, list[dict]] = {"valid": [], "test": []}
        self.tracks: dict[str, list[dict]] = {"valid": [], "test": []}
        self._media_dir: Path | None = None
        self.test_scores: dict[str, float] = {}

    def _targets(
        self, notes: list[torch.Tensor], starts: torch.Tensor, num_samples: int
    ) -> tuple[torch.Tensor, int]:
        """Padded targets of the crops (notes in track time, crops starting at ``starts``
        seconds, ``num_samples`` long) and how many were skipped: a target longer than
        ``max_target_length`` is left all PAD (no loss) rather than cut, as MT3 refuses them."""
        seconds = num_samples / SAMPLE_RATE
        kind = self.model_type
        rows = [
            crop_tokens(
                n.cpu().numpy(), start, start + seconds, self.granularity, kind.codec, kind.ties
            )
            for n, start in zip(notes, starts.tolist(), strict=True)
        ]
        kept = [row for row in rows if len(row) <= self.hparams.max_target_length]
        targets = torch.full((len(rows), max(map(len, kept), default=1)), PAD_ID, dtype=torch.long)
        for i, row in enumerate(rows):
            if len(row) <= self.hparams.max_target_length:
                targets[i, : len(row)] = torch.from_numpy(row)
        return targets.to(self.device), len(rows) - len(kept)

    def _loss(
        self,
        frames: torch.Tensor,
        targets: torch.Tensor,
        rolls: torch.Tensor | None = None,
        timing_weight: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean token cross-entropy (shift targets smoothed with ``shift_smoothing``) plus
        z-loss over non-PAD targets, ``shift`` and ``EOS`` targets weighted ``timing_weight``
        (plus the weighted roll loss when ``rolls`` are given), and token accuracy."""
        inputs = F.pad(targets[:, :-1], (1, 0), value=PAD_ID)
        encoded = self.model.encoder(frames)
        mask = targets != PAD_ID
        logits = self.model.decoder(inputs, encoded, keep=mask)  # (N, vocab): padding skipped
        targets = targets[mask]
        roll_loss = 0.0
        if rolls is not None:
            predicted = self.roll_head(encoded).unflatten(-1, (2, NUM_PITCHES)).transpose(1, 2)
            roll_loss = self.hparams.roll_loss_weight * F.binary_cross_entropy_with_logits(
                predicted, rolls
            )
        log_z = logits.logsumexp(-1)
        if self.hparams.shift_smoothing > 0:
            nll = shift_smoothed_nll(logits, targets, self.hparams.shift_smoothing)
        else:  # cross-entropy from the z-loss's logsumexp: one pass over the logits, no copy
            nll = log_z - logits.gather(-1, targets[..., None])[..., 0]
        per_token = nll + self.hparams.z_loss * log_z.square()
        accuracy = (logits.argmax(-1) == targets).sum() / max(len(targets), 1)
        shift = (targets >= token("shift", 0)) & (targets <= token("shift", MAX_SHIFT_STEPS))
        weights = torch.where(shift | (targets == EOS_ID), timing_weight, 1.0)
        return (per_token * weights).sum() / weights.sum().clamp(min=1e-9) + roll_loss, accuracy

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        audio = fit_length(batch["audio"].mean(dim=1), self.segment_samples)
        if self.hparams.mix_probability > 0:
            partners = mix_partners(len(audio), self.hparams.mix_probability)
            audio, notes = mix_crops(audio, batch["notes"], batch["start"], partners)
            batch = {**batch, "notes": notes}
        targets, skipped = self._targets(batch["notes"], batch["start"], self.segment_samples)
        rolls = None
        if self.roll_head is not None:
            frames = self.model_type.segment_frames
            rolls = torch.stack(
                [
                    torch.from_numpy(crop_rolls(n.cpu().numpy(), start, frames))
                    for n, start in zip(batch["notes"], batch["start"].tolist(), strict=True)
                ]
            ).to(self.device)
        loss, accuracy = self._loss(
            self.frontend(audio), targets, rolls, self.hparams.timing_loss_weight
        )
        size = audio.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/accuracy", accuracy, batch_size=size)
        self.log(
            "train/skipped_long_targets",
            float(skipped),
            reduce_fx="sum",
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=size,
        )
        return loss

    def _piece_loss(self, samples: torch.Tensor, notes: np.ndarray) -> torch.Tensor:
        kind = self.model_type
        segments, frames = split_track(samples, kind.segment_frames)
        targets = notes_to_segment_tokens(
            notes, len(segments), self.granularity, kind.segment_frames, kind.codec, kind.ties
        )
        losses, size = [], self.hparams.decode_batch_size
        for start in range(0, len(segments), size):
            chunk = [
                torch.from_numpy(t[: self.hparams.max_target_length])
                for t in targets[start : start + size]
            ]
            padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True, padding_value=PAD_ID)
            inputs = self.frontend(segments[start : start + size], frames[start : start + size])
            losses.append(self._loss(inputs, padded.to(self.device))[0] * len(chunk))
        return torch.stack(losses).sum() / len(segments)

    def _evaluate(self, batch: dict, stage: str, batch_idx: int) -> None:
        lengths = batch.get("lengths", [batch["audio"].shape[-1]] * len(batch["key"]))
        for i, key in enumerate(batch["key"]):
            samples = batch["audio"][i].mean(dim=0)[: int(lengths[i])]
            ref = batch["notes"][i].cpu().numpy()
            decoded = transcribe_track(
                self.model,
                self.frontend,
                samples,
                self.hparams.decode_batch_size,
                self.hparams.max_decode_length,
                grammar=self.granularity if self.hparams.constrained_decoding else None,
                model_type=self.model_type,
                merge_repeats=self.hparams.merge_repeats_ms / 1000,
                min_onset_probability=self.hparams.min_onset_probability,
            )
            self._tracks[stage].append(
                {
                    "key": key,
                    **track_metrics(ref, decoded.notes),
                    "loss": float(self._piece_loss(samples, ref)),
                    "invalid_tokens": float(decoded.invalid),
                }
            )
            if stage == "valid" and batch_idx == 0 and i == 0:
                self._log_media(key, ref, decoded.notes)

    def _finish(self, stage: str) -> dict[str, float]:
        """Gather the tracks of every rank (every rank calls this, with or without tracks of its
        own), log the dataset scores (means over all tracks, loss and invalid tokens included) as
        ``{stage}/<metric>`` and return them; ``{}`` when no rank had a track. The gathered
        tracks, sorted by key, are kept in ``self.tracks[stage]``."""
        local, self._tracks[stage] = self._tracks[stage], []
        tracks = sorted(chain.from_iterable(gather_objects(local)), key=lambda t: t["key"])
        self.tracks[stage] = tracks
        if not tracks:
            return {}
        scores = dataset_metrics([{k: v for k, v in t.items() if k != "key"} for t in tracks])
        log_reduced(self, {f"{stage}/{name}": value for name, value in scores.items()})
        return scores

    def on_validation_epoch_start(self) -> None:
        sync_buffers_for_validation(self)
        # Trainer.log_dir is a collective (a broadcast): every rank resolves it here, not only
        # the rank that writes the media.
        self._media_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "media"

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "valid", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._finish("valid")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def on_test_epoch_end(self) -> None:
        self.test_scores = self._finish("test")

    def _log_media(self, key: str, ref: np.ndarray, est: np.ndarray) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        out = self._media_dir
        out.mkdir(parents=True, exist_ok=True)
        stem = f"step{self.global_step:07d}-{key}"
        midi, image = inside(out, f"{stem}.mid"), inside(out, f"{stem}.png")
        notes_to_midi(est).write(str(midi))
        fig = _piano_roll_figure(ref, est, f"{key} at step {self.global_step}")
        fig.savefig(image, dpi=80)
        if isinstance(self.logger, WandbLogger):
            self.logger.log_image("valid/piano_roll", [str(image)], step=self.global_step)
            self.logger.experiment.save(str(midi), base_path=str(midi.parent), policy="now")
        elif isinstance(self.logger, TensorBoardLogger):
            self.logger.experiment.add_figure("valid/piano_roll", fig, self.global_step)

    def evaluation_tables(self) -> list[Table]:
        """The MT3 paper's Table 2 and Table 3 layouts for the evaluated dataset, with MT3's
        published numbers beside ours (empty where MT3 did not evaluate this dataset); for the
        piano model (``ismir2021``), the 2021 paper's piano table and MT3's Table 2 instead."""
        name = self.hparams.dataset_name
        if self.model_type.name == "ismir2021":
            return self._piano_tables(name)
        paper3 = PAPER_TABLE3.get(name, {})
        table2 = self._table2_rows(name)
        table3 = [
            {
                "grouping": label,
                "MT3 (mixture)": paper3.get(key),
                "ours": self.test_scores.get(f"multi_{key}_f1"),
            }
            for key, label in TABLE3_ROWS.items()
        ]
        where = f"{PAPER_NAMES[name]} ({name})" if name in PAPER_NAMES else name
        note = (
            PAPER_NOTE if name in PAPER_NAMES else f"{PAPER_NOTE} MT3 did not evaluate on {name}."
        )
        tables = [
            Table("mt3_table2", f"Transcription F1 on {where} (MT3 Table 2 layout)", table2, note),
            Table(
                "mt3_table3", f"Multi-instrument F1 on {where} (MT3 Table 3 layout)", table3, note
            ),
        ]
        return tables + self._track_tables(where)

    def _table2_rows(self, name: str) -> list[dict]:
        """MT3's Table 2 rows for dataset ``name``: its published numbers and ours."""
        paper2 = PAPER_TABLE2.get(name, {})
        return [
            {
                "metric": label,
                "MT3 (single dataset)": paper2.get(key, (None, None))[0],
                "MT3 (mixture)": paper2.get(key, (None, None))[1],
                "ours": self.test_scores.get(key),
            }
            for key, label in TABLE2_ROWS.items()
        ]

    def _piano_tables(self, name: str) -> list[Table]:
        """The 2021 piano paper's layout (its MAESTRO v3 numbers beside ours, MAESTRO only),
        MT3's Table 2 for the same dataset and the per-track table."""
        where = f"{PAPER_NAMES[name]} ({name})" if name in PAPER_NAMES else name
        paper = PAPER_PIANO if name == "maestro" else {}
        rows = [
            {
                "metric": label,
                "Hawthorne et al. 2021": paper.get(key),
                "ours": self.test_scores.get(key),
            }
            for key, label in PIANO_ROWS.items()
        ]
        note = (
            PIANO_NOTE
            if name == "maestro"
            else f"{PIANO_NOTE} The paper evaluated MAESTRO, not {name}."
        )
        table2 = self._table2_rows(name)
        tables = [
            Table(
                "piano_table",
                f"Piano transcription F1 on {where} (Hawthorne et al. 2021 layout)",
                rows,
                note,
            ),
            Table(
                "mt3_table2",
                f"Transcription F1 on {where} (MT3 Table 2 layout)",
                table2,
                PAPER_NOTE,
            ),
        ]
        return tables + self._track_tables(where)

    def _track_tables(self, where: str) -> list[Table]:
        """Every test track's F1 scores, loss and invalid tokens, sorted by key (none before
        ``trainer.test``)."""
        tracks = self.tracks["test"]
        if not tracks:
            return []
        columns = [k for k in tracks[0] if k.endswith("_f1")] + ["loss", "invalid_tokens"]
        rows = [{"key": t["key"], **{c: t[c] for c in columns}} for t in tracks]
        note = f"{len(rows)} tracks; the dataset scores above are the means of these columns."
        return [Table("mt3_tracks", f"Per-track scores on {where}", rows, note)]

    def configure_optimizers(self) -> dict:
        optim = self.hparams.optim
        options = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in optim.get(optim["name"], {}).items()
        }
        optimizer_class = (
            torch.optim.Adafactor if optim["name"] == "adafactor" else torch.optim.AdamW
        )
        optimizer = optimizer_class(self.parameters(), lr=optim["lr"], **options)
        warmup, cosine = optim.get("warmup_steps", 0), optim.get("cosine_steps")
        if not warmup and cosine is None:
            return {"optimizer": optimizer}
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, cosine))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
