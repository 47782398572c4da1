"""``solver=separation``: train and evaluate a source separator (Spleeter's U-Nets or HTDemucs).

Training takes random crops of the dataset's mix and stems (``batch["stems"]`` in
:data:`data.shards.STEMS` order) and minimises the separator's own loss
(``separator.training_loss``: Spleeter's L1 on masked magnitudes, Demucs' L1 on waveforms). With
``augment`` (the Demucs recipe, set for HTDemucs) the stems of a batch are shifted, channel- and
sign-flipped, rescaled and remixed across tracks (:func:`musicgen.separation.augment.augment`),
and the mix is their sum. A model stem the dataset lacks by name is built from its stems:
``accompaniment`` = drums + bass + other; ``piano`` cannot be trained (no dataset has it).

Validation and test separate whole tracks with overlapping windows
(:func:`musicgen.separation.apply.separate`, as ``demucs.apply.apply_model``) and score each
track and stem with :mod:`musicgen.metrics.separation`: museval SDR (median over 1 s windows)
and uSDR, for the model and for the unprocessed mixture taken as every stem's estimate (the
baseline). The per-track records of all ranks are gathered at the epoch end and reduced as MUSDB
results are (SDR: median over tracks; uSDR: mean), logged as ``{stage}/sdr_<stem>``,
``{stage}/usdr_<stem>``, ``{stage}/mix_sdr_<stem>``, their means over stems ``{stage}/sdr`` ...,
and ``{stage}/sdr_gain`` (``sdr - mix_sdr``). A 5-stem model's piano estimate is added to its
``other`` for scoring. The first validation track's mix and separated stems go to the logger.
"""

from __future__ import annotations

from itertools import chain

import lightning as L
import numpy as np
import torch

from data.shards import STEMS
from musicgen.errors import UserError
from musicgen.metrics.separation import dataset_sdr, dataset_usdr, track_sdr, track_usdr
from musicgen.separation import build_separator
from musicgen.separation.apply import separate
from musicgen.separation.augment import augment as demucs_augment
from musicgen.tables import Table
from solvers import media
from solvers.reduction import gather_objects, log_reduced, sync_buffers_for_validation

ACCOMPANIMENT = ("drums", "bass", "other")
METRICS = ("sdr", "usdr", "mix_sdr", "mix_usdr")

# Spleeter (JOSS 2020; deezer/spleeter paper.md, "Separation performances"): the released
# 4stems model on the MUSDB18 test set, soft masking / multi-channel Wiener filtering.
SPLEETER_SDR = {
    "vocals": (6.55, 6.86),
    "bass": (5.10, 5.51),
    "drums": (5.93, 6.71),
    "other": (4.24, 4.55),
}
# HTDemucs (arXiv 2211.08553v1, Table 1, MUSDB HQ test SDR): trained on MUSDB only / with 800
# extra songs.
HTDEMUCS_SDR = {
    "drums": (7.94, 10.05),
    "bass": (8.48, 9.78),
    "other": (5.72, 6.42),
    "vocals": (7.93, 8.93),
}
PAPER_NOTE = (
    "Published numbers (MUSDB18 test set, museval SDR: median over 1 s windows, median over "
    "the 50 tracks): Spleeter = deezer/spleeter paper.md (JOSS 2020, doi 10.21105/joss.02154), "
    "the released 4stems model trained on Deezer's internal data, with soft masks (as ours) and "
    "with multi-channel Wiener filtering; HTDemucs = arXiv 2211.08553v1 Table 1 (MUSDB18-HQ), "
    "trained on MUSDB18-HQ alone and with 800 extra songs. They did not evaluate on other "
    "datasets and reported no uSDR: those cells are empty. The mixture rows score the "
    "unprocessed mix as the estimate of every stem."
)


def model_targets(stems: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """The training targets ``(B, S_model, C, T)`` of a model's stems from dataset stems
    ``(B, 4, C, T)`` in :data:`STEMS` order."""
    out = []
    for name in names:
        if name in STEMS:
            out.append(stems[:, STEMS.index(name)])
        elif name == "accompaniment":
            out.append(stems[:, [STEMS.index(s) for s in ACCOMPANIMENT]].sum(dim=1))
        else:
            raise UserError(
                f"the separator has a {name!r} stem that the dataset's stems {list(STEMS)} cannot "
                "give: train a model whose stems are among them (or accompaniment)"
            )
    return torch.stack(out, dim=1)


def scored_stems(names: tuple[str, ...]) -> tuple[str, ...]:
    """The stems a model is scored on: its own, a piano stem folded into ``other``."""
    return tuple(name for name in names if name != "piano")


def scored_estimates(estimates: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """``(S_model, C, T)`` estimates as those of :func:`scored_stems` (piano added to other)."""
    if "piano" not in names:
        return estimates
    kept = [i for i, name in enumerate(names) if name != "piano"]
    out = estimates[kept].clone()
    if "other" in names:
        out[scored_stems(names).index("other")] += estimates[names.index("piano")]
    return out


def _stem_mean(published: dict[str, tuple[float, float]]) -> tuple[float, ...]:
    """The mean over stems of each column of published per-stem numbers."""
    return tuple(round(float(v), 3) for v in np.mean(list(published.values()), axis=0))


class SeparationSolver(L.LightningModule):
    """Trains ``separator`` (a :func:`musicgen.separation.build_separator` config: ``kind``
    spleeter or htdemucs and the model's arguments) with Adam (``optim``: ``lr``, ``betas``,
    ``weight_decay``, ``max_norm`` gradient clipping or null). ``augment`` (null: none) holds
    :func:`musicgen.separation.augment.augment`'s options in seconds: ``shift_seconds``,
    ``flip``, ``scale`` ([low, high] or null), ``remix_group_size`` (0: no remix).
    ``joint_sdr`` scores the stems of a track together as MUSDB does (false: each alone, for
    datasets whose tracks lack stems); ``segment_seconds``/``overlap`` the evaluation windows
    (null: the model's training segment)."""

    def __init__(
        self,
        separator: dict,
        optim: dict | None = None,
        augment: dict | None = None,
        joint_sdr: bool = True,
        segment_seconds: float | None = None,
        overlap: float = 0.25,
        log_audio_items: int = 1,
        dataset_name: str = "",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        try:
            self.separator = build_separator(dict(separator))
        except (TypeError, ValueError) as err:
            raise UserError(f"solver.module.separator is invalid: {err}") from None
        self.hparams["separator"] = dict(self.separator.config)  # defaults included
        self.optim = {"lr": 1e-4, "betas": [0.9, 0.999], "weight_decay": 0.0, "max_norm": None}
        self.optim |= dict(optim or {})
        self.stems = tuple(self.separator.stems)
        self.scored = scored_stems(self.stems)
        self._tracks: dict[str, list[dict]] = {"valid": [], "test": []}
        self.tracks: dict[str, list[dict]] = {"valid": [], "test": []}
        self.test_scores: dict[str, float] = {}

    # ---- training ------------------------------------------------------------------------

    def _generator(self) -> torch.Generator:
        """A generator seeded by step and rank: the same draws on resume."""
        seed = (self.global_step * 1_000_003 + self.global_rank) % 2**63
        return torch.Generator().manual_seed(seed)

    def _augmented(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The mix and dataset stems of a training batch, augmented when configured."""
        stems = batch["stems"]
        if not self.hparams.augment:
            return batch["audio"], stems
        options = dict(self.hparams.augment)
        group = options.get("remix_group_size", 4)
        if group and stems.shape[0] % group:
            raise UserError(
                f"remixing stems in groups of {group} needs a batch size that is a multiple of "
                f"it (got {stems.shape[0]}): set loader.batch_size or "
                "solver.module.augment.remix_group_size"
            )
        scale = options.get("scale", [0.25, 1.25])
        stems = demucs_augment(
            stems,
            self._generator(),
            shift_samples=round(options.get("shift_seconds", 1.0) * self.separator.sample_rate),
            flip=options.get("flip", True),
            scale_range=tuple(scale) if scale else None,
            remix_group_size=group,
        )
        return stems.sum(dim=1), stems

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        mix, stems = self._augmented(batch)
        loss = self.separator.training_loss(mix, model_targets(stems, self.stems))
        self.log("train/loss", loss, prog_bar=True, batch_size=mix.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.separator.parameters(),
            lr=self.optim["lr"],
            betas=tuple(self.optim["betas"]),
            weight_decay=self.optim["weight_decay"],
        )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by norm at ``optim.max_norm`` (or the trainer's ``gradient_clip_val``)."""
        max_norm = self.optim["max_norm"] or gradient_clip_val
        if max_norm:
            self.clip_gradients(
                optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm"
            )

    # ---- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def separate_track(self, mix: torch.Tensor) -> torch.Tensor:
        """``(C, T)`` mix at the data rate -> scored estimates ``(S, C, T)``."""
        estimates = separate(
            self.separator,
            mix[None],
            self.separator.sample_rate,
            segment_seconds=self.hparams.segment_seconds,
            overlap=self.hparams.overlap,
        )[0]
        return scored_estimates(estimates, self.stems)

    def track_record(self, key: str, mix: torch.Tensor, stems: torch.Tensor) -> dict:
        """The scores of one track: ``(C, T)`` mix, ``(4, C, T)`` dataset stems."""
        estimates = self.separate_track(mix)
        refs = model_targets(stems[None], self.scored)[0].double().cpu().numpy()
        ests = estimates.double().cpu().numpy()
        baseline = np.broadcast_to(mix.double().cpu().numpy(), refs.shape)
        rate, joint = self.separator.sample_rate, self.hparams.joint_sdr
        return {
            "key": key,
            "sdr": track_sdr(refs, ests, rate, joint).tolist(),
            "usdr": track_usdr(refs, ests).tolist(),
            "mix_sdr": track_sdr(refs, baseline, rate, joint).tolist(),
            "mix_usdr": track_usdr(refs, baseline).tolist(),
            "seconds": mix.shape[-1] / rate,
        }

    def _evaluate(self, batch: dict, stage: str, batch_idx: int) -> None:
        lengths = batch.get("lengths", [batch["audio"].shape[-1]] * len(batch["key"]))
        for i, key in enumerate(batch["key"]):
            length = int(lengths[i])
            mix, stems = batch["audio"][i, :, :length], batch["stems"][i, ..., :length]
            self._tracks[stage].append(self.track_record(key, mix, stems))
            if stage == "valid" and batch_idx == 0 and i < self.hparams.log_audio_items:
                self._log_media(key, mix)

    def _finish(self, stage: str) -> dict[str, float]:
        """Gather every rank's tracks (every rank calls this), reduce and log them."""
        local, self._tracks[stage] = self._tracks[stage], []
        tracks = sorted(chain.from_iterable(gather_objects(local)), key=lambda t: t["key"])
        self.tracks[stage] = tracks
        if not tracks:
            return {}
        scores: dict[str, float] = {}
        for metric in METRICS:
            reduce = dataset_sdr if metric in ("sdr", "mix_sdr") else dataset_usdr
            per_stem = reduce([t[metric] for t in tracks])
            scores |= {
                f"{metric}_{s}": float(v) for s, v in zip(self.scored, per_stem, strict=True)
            }
            scores[metric] = (
                float(np.nanmean(per_stem)) if not np.isnan(per_stem).all() else float("nan")
            )
        scores["sdr_gain"] = scores["sdr"] - scores["mix_sdr"]
        scores["usdr_gain"] = scores["usdr"] - scores["mix_usdr"]
        scores["tracks"] = float(len(tracks))
        log_reduced(self, {f"{stage}/{k}": v for k, v in scores.items()})
        return scores

    def on_validation_epoch_start(self) -> None:
        sync_buffers_for_validation(self)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "valid", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._finish("valid")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def on_test_epoch_end(self) -> None:
        self.test_scores = self._finish("test")

    def _log_media(self, key: str, mix: torch.Tensor) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        if not media.supports_media(self.logger):
            return
        estimates = self.separate_track(mix)
        clips = [mix, *estimates]
        captions = [f"{key}_mix", *(f"{key}_{name}" for name in self.scored)]
        rate = self.separator.sample_rate
        media.log_audio(self.logger, "valid/separation", clips, rate, self.global_step, captions)
        images = [media.spectrogram_image(clip, rate) for clip in clips]
        media.log_images(self.logger, "valid/spectrogram", images, self.global_step, captions)

    # ---- tables --------------------------------------------------------------------------

    def evaluation_tables(self) -> list[Table]:
        """Per stem: our SDR and uSDR, the mixture's, and the published Spleeter and HTDemucs
        SDRs beside them (after ``trainer.test``); and every test track's scores."""
        scores, name = self.test_scores, self.hparams.dataset_name
        published = name == "musdb"
        rows = []
        for stem in (*self.scored, "mean"):
            suffix = "" if stem == "mean" else f"_{stem}"
            spleeter = SPLEETER_SDR.get(stem, (None, None)) if published else (None, None)
            htdemucs = HTDEMUCS_SDR.get(stem, (None, None)) if published else (None, None)
            if stem == "mean" and published and set(self.scored) >= set(SPLEETER_SDR):
                spleeter, htdemucs = _stem_mean(SPLEETER_SDR), _stem_mean(HTDEMUCS_SDR)
            rows.append(
                {
                    "stem": stem,
                    "ours SDR": scores.get(f"sdr{suffix}"),
                    "ours uSDR": scores.get(f"usdr{suffix}"),
                    "mixture SDR": scores.get(f"mix_sdr{suffix}"),
                    "mixture uSDR": scores.get(f"mix_usdr{suffix}"),
                    "Spleeter 4stems, masks (paper)": spleeter[0],
                    "Spleeter 4stems, MWF (paper)": spleeter[1],
                    "HTDemucs, MUSDB only (paper)": htdemucs[0],
                    "HTDemucs, +800 songs (paper)": htdemucs[1],
                }
            )
        kind = self.separator.config.get("kind", "")
        note = (
            f"Ours: {kind} ({', '.join(self.stems)}), {int(scores.get('tracks', 0))} tracks of "
            f"{name or 'the dataset'}; SDR = museval BSS Eval v4 ({'stems scored together' if self.hparams.joint_sdr else 'each stem scored alone'}), "
            "median over 1 s windows then over tracks; uSDR = MDX utterance-level SDR, mean over "
            "tracks; mean = mean over stems (for the papers: of their per-stem numbers). "
            + PAPER_NOTE
        )
        if not published:
            note += (
                f" The published numbers are on MUSDB18, not {name or 'this dataset'}: left empty."
            )
        tables = [
            Table("separation", f"Separation SDR per stem on {name or 'the dataset'}", rows, note)
        ]
        if self.tracks["test"]:
            track_rows = [
                {
                    "key": t["key"],
                    "seconds": round(t["seconds"], 2),
                    **{
                        f"{m} {s}": v
                        for m in ("sdr", "usdr", "mix_sdr")
                        for s, v in zip(self.scored, t[m], strict=True)
                    },
                }
                for t in self.tracks["test"]
            ]
            tables.append(
                Table(
                    "separation_tracks",
                    "Per-track SDR / uSDR (dB)",
                    track_rows,
                    "NaN: not scored (silent reference).",
                )
            )
        return tables
