"""``solver=musicgen`` / ``solver=musicgen_melody``: a MusicGen language model (arXiv 2306.05284).

Training: the batch audio is tokenised on the fly by the frozen codec (first ``lm.n_q``
codebooks), the captions (and, for melody models, the chromagram of the stemmed audio) become
the prefix prepended to the decoder input, and the LM learns the delay-pattern tokens with
cross-entropy (per codebook CE and perplexity are logged). Classifier-free-guidance dropout drops
all conditions of an item with ``cfg_dropout`` and the melody with ``melody_dropout``, both
decided by one uniform draw per item as AudioCraft's two dropouts combine (the melody is dropped
with ``max(cfg_dropout, melody_dropout)``: see ``ConditionProvider.cfg_dropout``). AdamW with
linear warm-up and cosine decay, gradient clipping at
``optim.max_norm``, and an EMA of the trainable weights (LM and condition projections: the codec
and the text encoder are frozen) that evaluation and export use. Mixed precision comes from the
trainer's ``precision`` (``bf16-mixed`` on GPU).

Validation logs CE/perplexity, generates ``samples.count`` clips with and without the melody
(audio and condition-vs-output chromagrams to W&B/TensorBoard) and their chroma cosine with the
melody condition. The test loop generates one clip per item (its caption, its melody) and
:meth:`MusicGenSolver.evaluation_tables` lays FAD, KL, CLAP and chroma cosine out as the
paper's Table 1, with the published MusicGen rows beside ours.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn

from musicgen.compression import CodecConfig, CompressionModel
from musicgen.conditioners.chroma import ChromaExtractor
from musicgen.conditioners.chroma_cache import ChromaCache
from musicgen.errors import UserError
from musicgen.metrics.chroma_cosine import ChromaCosineSimilarity, frames_for_samples
from musicgen.metrics.clap import ClapScore, build_clap
from musicgen.metrics.kl import KLDivergence, build_kl
from musicgen.musicgen_model import GENERATION, MusicGen
from musicgen.tables import Table
from solvers import fad_sums, media
from solvers.reduction import log_reduced, sum_tensors, sync_buffers_for_validation
from solvers.schedules import ClipsAtMaxNorm, ema_decay, stepped

OPTIM = {
    "lr": 1e-4,
    "betas": [0.9, 0.95],
    "weight_decay": 0.1,
    "max_norm": 1.0,
    "warmup_steps": 0,
    "cosine_steps": None,
}
SAMPLES = {"count": 4, "duration": 8.0, "seed": 0}
EVALUATION = {
    "fad_embedder": "crepe",
    "fad_weights": None,
    "fad_options": {},
    "clap_weights": None,
    "clap_text": "roberta-base",
    "kl_weights": None,
}
SYSTEMS = {"melody": "text + melody", "no_melody": "text"}

PAPER = "arXiv 2306.05284 Table 1"
CARD = "AudioCraft model card (released checkpoint)"
# The published MusicGen rows: the paper's Table 1 (MusicCaps) where a copy of it could be read,
# and AudioCraft's model card (model_cards/MUSICGEN_MODEL_CARD.md) for the released checkpoints.
# A number is filled in only where it was read in the named source; the others stay empty.
PAPER_ROWS = [
    {
        "system": "MusicGen 300M, text (paper)",
        "FAD model": "VGGish",
        "source": f"{PAPER}: no readable copy of this row",
    },
    {
        "system": "MusicGen 1.5B, text (paper)",
        "FAD": 3.4,
        "FAD model": "VGGish",
        "KL": 1.23,
        "source": f"{PAPER}: FAD as quoted by Papers with Code and HyperAI, KL by HyperAI",
    },
    {
        "system": "MusicGen 3.3B, text (paper)",
        "FAD": 3.8,
        "FAD model": "VGGish",
        "source": f"{PAPER}: FAD as quoted by Papers with Code and HyperAI (KL: copies disagree)",
    },
    {
        "system": "MusicGen 1.5B, text + random melody (paper)",
        "FAD": 5.0,
        "FAD model": "VGGish",
        "KL": 1.31,
        "source": f"{PAPER}: FAD as quoted by Papers with Code and HyperAI, KL by HyperAI",
    },
    {
        "system": "facebook/musicgen-small (300M, text)",
        "FAD": 4.88,
        "FAD model": "VGGish",
        "KL": 1.42,
        "CLAP_scr": 0.27,
        "source": CARD,
    },
    {
        "system": "facebook/musicgen-medium (1.5B, text)",
        "FAD": 5.14,
        "FAD model": "VGGish",
        "KL": 1.38,
        "CLAP_scr": 0.28,
        "source": CARD,
    },
    {
        "system": "facebook/musicgen-large (3.3B, text)",
        "FAD": 5.48,
        "FAD model": "VGGish",
        "KL": 1.37,
        "CLAP_scr": 0.28,
        "source": CARD,
    },
    {
        "system": "facebook/musicgen-melody (1.5B, text + melody)",
        "FAD": 4.93,
        "FAD model": "VGGish",
        "KL": 1.41,
        "CLAP_scr": 0.27,
        "Cos": 0.44,
        "source": CARD,
    },
]
PAPER_NOTE = (
    f"Published rows: {PAPER} (MusicCaps; FAD on VGGish embeddings at 16 kHz, KL on PaSST label "
    "distributions, CLAP score) with only the numbers we could read in a public copy of the table "
    "(the source column names it; an empty cell was not read, never guessed), and the released "
    "checkpoints' MusicCaps scores from AudioCraft's model card (model_cards/MUSICGEN_MODEL_CARD.md: "
    "FAD, KLD, text consistency = CLAP score, chroma cosine similarity, published for the melody "
    "model only); those models were trained on HT-Demucs-separated instrumental data, hence their "
    "differences from the paper. Their evaluation set and embedding models may differ from ours "
    "(see 'FAD model' and n): reference points, not a like-for-like comparison."
)


class ParameterEMA(nn.Module):
    """Exponential moving averages of a module's trainable parameters, kept as buffers (named
    like the parameters with ``/`` for ``.``), so checkpoints carry them."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        for name, param in module.named_parameters():
            if param.requires_grad:
                self.register_buffer(name.replace(".", "/"), param.detach().clone())

    def _pairs(self, module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        params = dict(module.named_parameters())
        return [(params[name.replace("/", ".")], shadow) for name, shadow in self.named_buffers()]

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Move the averages towards ``module``; the decay ramps up over the first steps."""
        decay = ema_decay(self.decay, step)
        for param, shadow in self._pairs(module):
            shadow.lerp_(param.detach().to(shadow.dtype), 1 - decay)

    @contextmanager
    def applied(self, module: nn.Module):
        """Inside the block, ``module`` holds the averaged weights; its own come back after."""
        pairs = self._pairs(module)
        with torch.no_grad():
            saved = [param.detach().clone() for param, _ in pairs]
            for param, shadow in pairs:
                param.copy_(shadow)
        try:
            yield module
        finally:
            with torch.no_grad():
                for (param, _), own in zip(pairs, saved, strict=True):
                    param.copy_(own)


def released_model(folder: str, text: dict | None, melody: dict | None) -> MusicGen:
    """``MusicGen.from_pretrained(folder)`` (AudioCraft or transformers layout) to fine-tune, with
    the T5 folder (``text.local_dir``) and the melody stemmer of the solver's settings."""
    demucs = ((melody or {}).get("stemmers") or {}).get("demucs") or {}
    return MusicGen.from_pretrained(
        folder,
        text_dir=(text or {}).get("local_dir"),
        stemmer=(melody or {}).get("stemmer"),
        demucs_repo=demucs.get("repo"),
    )


def load_codec(path: str | None) -> CompressionModel:
    """The frozen codec: a ``train.py`` .ckpt of ``solver=compression``, a saved codec directory
    or an official EnCodec ``.th`` file in a local folder."""
    if not path:
        raise UserError(
            "solver.module.codec_checkpoint is not set: pass solver.module.codec_checkpoint=<run dir of "
            "train.py solver=compression>/checkpoints/last.ckpt (or an official EnCodec .th file)"
        )
    if not Path(path).exists():
        raise UserError(
            f"codec checkpoint {path} does not exist: train the codec first (python train.py "
            "experiment=compression_tiny) or point solver.module.codec_checkpoint at a codec checkpoint"
        )
    return CompressionModel.from_checkpoint(path)


def melody_frames(melody: dict, codec: CompressionModel, seconds: float) -> int:
    """Frames of the melody condition for a training segment: its fixed length, so the melody
    prefix has the same length (and the audio the same offset) in training and generation.
    Chroma frames, or one frame per codec frame when the melody is ``step_aligned``."""
    samples = round(seconds * codec.sample_rate)
    if melody.get("step_aligned"):
        return math.ceil(samples / codec.config.hop_length)
    options = {k: melody[k] for k in ("n_chroma", "winlen", "hop") if k in melody}
    return ChromaExtractor(codec.sample_rate, **options).num_frames(samples)


def chroma_image(
    reference: torch.Tensor | None, output: torch.Tensor, scale: int = 8
) -> np.ndarray:
    """A uint8 image of chromagrams ``(F, 12)``: the condition above the output (a blank row
    between), pitch class C at the bottom of each, every cell ``scale`` pixels wide."""
    blocks = [output.float().T.flip(0)]
    if reference is not None:
        frames = min(reference.shape[0], output.shape[0])
        blank = torch.zeros(1, frames)
        blocks = [reference[:frames].float().T.flip(0), blank, blocks[0][:, :frames]]
    image = torch.cat([b.cpu() for b in blocks], dim=0)
    image = image / image.max().clamp(min=1e-8)
    image = image.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return (image * 255).to(torch.uint8).numpy()


class MusicGenSolver(ClipsAtMaxNorm, L.LightningModule):
    """Trains a :class:`~musicgen.musicgen_model.MusicGen` language model on a frozen codec.

    Arguments are plain containers (saved as hyperparameters): ``lm`` holds
    :class:`~musicgen.lm.LMConfig` fields (``card`` defaults to the codec's codebook size),
    ``text``/``melody`` the condition settings (see :func:`musicgen.musicgen_model.build_conditions`;
    ``melody: null`` for a text-only model; its ``duration_frames`` default to the chroma frames of
    ``segment_seconds``), ``data_fields`` the batch fields the data config asks for (checked
    against the stemmer), ``generation`` the sampling settings of every generation,
    ``samples`` how many validation clips (``count``, ``duration`` in seconds, ``seed``),
    ``codec`` the codec's config when rebuilding from a checkpoint (which holds its weights;
    otherwise the codec is read from ``codec_checkpoint``), ``init_from`` a released MusicGen
    folder to fine-tune (AudioCraft or transformers layout: the model's shape, codec and
    conditions come from it; the LM and condition projections train, codec and text encoder stay
    frozen), ``released_layout`` the conditions prefixed as the released models read them
    (melody then text, every position attended; what ``python -m musicgen.export`` needs for
    melody and prefix-conditioned models; a released folder brings its own), ``evaluation`` the
    test metrics' models (``fad_embedder``: crepe, vggish or encodec, with
    ``fad_weights``; ``clap_weights``/``kl_weights`` enable those slots).
    """

    def __init__(
        self,
        lm: dict,
        codec_checkpoint: str | None = None,
        codec: dict | None = None,
        text: dict | None = None,
        melody: dict | None = None,
        data_fields: list[str] | None = None,
        segment_seconds: float | None = None,
        cfg_dropout: float = 0.3,
        melody_dropout: float = 0.5,
        optim: dict | None = None,
        ema_decay: float | None = 0.99,
        generation: dict | None = None,
        samples: dict | None = None,
        evaluation: dict | None = None,
        dataset_name: str = "",
        chroma_cache: str | None = None,
        init_from: str | None = None,
        released_layout: bool = False,
    ) -> None:
        super().__init__()
        if (melody or {}).get("stemmer") == "oracle" and "stems" not in (data_fields or []):
            raise UserError(
                "the oracle stemmer keeps the dataset's own stems: add stems to solver.data.fields "
                "(and use a dataset that has them, e.g. dataset=synth)"
            )
        for name, p in (("cfg_dropout", cfg_dropout), ("melody_dropout", melody_dropout)):
            if not 0.0 <= p <= 1.0:
                raise UserError(f"solver.module.{name} must be a probability in [0, 1], got {p}")
        self.save_hyperparameters()
        if init_from:  # a released model: its shape, codec and conditions come from the folder
            self.model = released_model(init_from, text, melody)
            codec = self.model.codec
        else:
            # A checkpoint holds the codec's weights: rebuilding it takes only its config.
            codec = (
                CompressionModel(CodecConfig.from_dict(codec))
                if codec
                else load_codec(codec_checkpoint)
            )
            if melody is not None and melody.get("duration_frames") is None and segment_seconds:
                frames = melody_frames(melody, codec, segment_seconds)
                melody = {**melody, "duration_frames": frames}
                self.hparams["melody"] = melody
            self.model = MusicGen.build(codec, lm, text, melody, segment_seconds, released_layout)
        self.hparams["codec"] = codec.config.to_dict()  # the checkpoint rebuilds the codec from it
        self.hparams["lm"] = self.model.lm.config.to_dict()
        self.optim = {**OPTIM, **(optim or {})}
        self.generation = {**GENERATION, **(generation or {})}
        self.samples = {**SAMPLES, **(samples or {})}
        self.evaluation = {**EVALUATION, **(evaluation or {})}
        self.cfg_dropout, self.melody_dropout = cfg_dropout, melody_dropout
        self.ema = ParameterEMA(self.model, ema_decay) if ema_decay else None
        if chroma_cache and not self.model.has_melody:
            raise UserError("solver.module.chroma_cache is for melody models: unset it")
        self.chroma_cache_dir = chroma_cache
        self.chroma_cache = None
        self._embedder = None
        self._sums: dict[str, torch.Tensor] = {}
        self._loss_sums = torch.zeros(0, dtype=torch.float64)
        self._clap: dict[str, ClapScore] = {}
        self._kl: dict[str, KLDivergence] = {}

    def setup(self, stage: str) -> None:
        """Opens the chroma cache for training only: evaluation stems its inputs."""
        if stage == "fit" and self.chroma_cache_dir and self.chroma_cache is None:
            melody = self.model.conditions.melody
            self.chroma_cache = ChromaCache(self.chroma_cache_dir, melody, self.model.channels)

    # ---- training ------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(
            self.trainable_parameters(),
            lr=self.optim["lr"],
            betas=tuple(self.optim["betas"]),
            weight_decay=self.optim["weight_decay"],
        )
        return stepped(optimizer, self.optim)

    def _melody_inputs(self, batch: dict) -> dict:
        """The melody condition's input: the cached chroma of the crops when a chroma cache is
        configured (no stemming at each step), else the audio and stems to stem and analyse."""
        if not self.model.has_melody:
            return {}
        if self.chroma_cache is not None:
            length = batch["audio"].shape[-1]
            return {"chroma": self.chroma_cache.crop(batch["key"], batch["start"], length)}
        return {"wav": batch["audio"], "stems": batch.get("stems")}

    def dropout_masks(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-item (drop_text, drop_melody) for one training batch (CFG and melody dropout,
        combined as AudioCraft's)."""
        drop_text, drop_melody = self.model.conditions.cfg_dropout(
            batch_size, self.cfg_dropout, self.melody_dropout if self.model.has_melody else 0.0
        )
        drop_text = drop_text.to(self.device)
        return drop_text, drop_melody.to(self.device) if self.model.has_melody else None

    def loss(self, batch: dict, drop: tuple | None = None):
        """The LM loss of a batch: tokens from the frozen codec, prefix from its conditions."""
        codes = self.model.tokens(batch["audio"])
        drop_text, drop_melody = drop if drop is not None else (None, None)
        prefix, mask = self.model.conditions(
            list(batch["caption"]),
            drop_text=drop_text,
            drop_melody=drop_melody,
            **self._melody_inputs(batch),
        )
        valid = None
        if "lengths" in batch:
            hop = self.model.codec.config.hop_length
            frames = torch.arange(codes.shape[-1], device=codes.device)
            valid = frames[None] < (batch["lengths"].to(codes.device)[:, None] + hop - 1) // hop
        return self.model.lm.compute_loss(codes, prefix, mask, valid)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        size = batch["audio"].shape[0]
        out = self.loss(batch, self.dropout_masks(size))
        loss, ce = out.loss.detach(), out.ce_per_codebook.detach()
        self.log_dict(loss_metrics("train", loss, ce), batch_size=size)
        self.log("train/loss", loss, batch_size=size, prog_bar=True)
        return out.loss

    def _start_loss(self) -> None:
        """Zero per-rank sums of the item-weighted CE (overall, then per codebook) and items."""
        size = self.model.lm.config.n_q + 2
        self._loss_sums = torch.zeros(size, dtype=torch.float64, device=self.device)

    def _add_loss(self, out, size: int) -> None:
        values = torch.cat([out.loss.detach()[None], out.ce_per_codebook.detach()]).double()
        self._loss_sums += torch.cat([values * size, values.new_tensor([size])])

    def _log_eval_loss(self, stage: str) -> None:
        """Sum the loss sums over ranks (every rank calls this) and log the means over all items:
        ``{stage}/loss``, ``ce``, ``ppl`` (exp of the mean CE) and per codebook."""
        sums = self.trainer.strategy.reduce(self._loss_sums, reduce_op="sum")
        if sums[-1] == 0:  # no rank had an item
            return
        means = (sums[:-1] / sums[-1]).float()
        log_reduced(self, loss_metrics(stage, means[0], means[1:]))
        log_reduced(self, {f"{stage}/loss": means[0]}, prog_bar=True)

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, self.global_step)

    @contextmanager
    def evaluated(self):
        """The weights evaluated and exported: the EMA ones when there are."""
        if self.ema is None:
            yield self.model
        else:
            with self.ema.applied(self.model) as model:
                yield model

    # ---- generation ----------------------------------------------------------------------

    def generate(
        self, batch: dict, duration: float, with_melody: bool, count: int | None = None
    ) -> torch.Tensor:
        """Clips for the first ``count`` items of ``batch`` (their captions, and their melodies
        when ``with_melody``), sampled with ``generation`` from a fixed seed."""
        count = count or len(batch["caption"])
        generator = torch.Generator(self.device).manual_seed(int(self.samples["seed"]))
        melody = stems = None
        if with_melody:
            melody = batch["audio"][:count]
            stems = batch["stems"][:count] if "stems" in batch else None
        return self.model.generate(
            list(batch["caption"][:count]),
            melody,
            self.model.sample_rate,
            duration,
            melody_stems=stems,
            generator=generator,
            **self.generation,
        )

    def reference_chroma(self, batch: dict, count: int, length: int) -> torch.Tensor:
        """The melody condition's chromagram of the first ``count`` items, over ``length`` samples."""
        wav = self.model.prepare_melody(
            batch["audio"][:count], self.model.sample_rate, length, count
        )
        stems = batch["stems"][:count, ..., :length] if "stems" in batch else None
        if stems is not None and stems.shape[-1] < length:
            stems = torch.nn.functional.pad(stems, (0, length - stems.shape[-1]))
        return self.model.melody_chroma(wav, stems)

    def chroma_metrics(
        self, batch: dict, outputs: dict[str, torch.Tensor]
    ) -> dict[str, ChromaCosineSimilarity]:
        """Chroma cosine of each output with the melody condition over each item's valid
        frames, as AudioCraft counts them: ``ceil(samples / hop)`` of the item's valid samples
        (its ``lengths`` entry, at most the output's length), so batch padding does not count."""
        first = next(iter(outputs.values()))
        count, length = first.shape[0], first.shape[-1]
        reference = self.reference_chroma(batch, count, length)
        samples = [min(int(n), length) for n in batch.get("lengths", [length] * count)[:count]]
        hop = self.model.conditions.melody.chroma.hop
        metrics = {}
        for name, wav in outputs.items():
            chroma = self.model.chroma(wav)
            common = min(reference.shape[1], chroma.shape[1])
            metrics[name] = ChromaCosineSimilarity()
            frames = [min(frames_for_samples(n, hop), common) for n in samples]
            metrics[name].update(reference, chroma, frames)
        return metrics

    def chroma_scores(self, batch: dict, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Chroma cosine (frame-weighted) of each output with the melody condition."""
        return {
            name: metric.compute() for name, metric in self.chroma_metrics(batch, outputs).items()
        }

    # ---- validation ----------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        sync_buffers_for_validation(self)
        self._start_loss()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        size = batch["audio"].shape[0]
        with self.evaluated():
            self._add_loss(self.loss(batch), size)
            if batch_idx == 0 and self.global_rank == 0 and self.samples["count"] > 0:
                self._validation_samples(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval_loss("valid")

    def _validation_samples(self, batch: dict) -> None:
        count, duration = min(self.samples["count"], size_of(batch)), self.samples["duration"]
        outputs = {"no_melody": self.generate(batch, duration, False, count)}
        if self.model.has_melody:
            outputs = {"melody": self.generate(batch, duration, True, count), **outputs}
            for name, score in self.chroma_scores(batch, outputs).items():
                self.log(f"valid/chroma_cos_{name}", score, batch_size=count, rank_zero_only=True)
        self._log_media(batch, outputs)

    def _log_media(self, batch: dict, outputs: dict[str, torch.Tensor]) -> None:
        if not media.supports_media(self.logger):
            return
        step, rate = self.global_step, self.model.sample_rate
        clips, captions, images = [], [], []
        reference = None
        if self.model.has_melody:
            first = next(iter(outputs.values()))
            reference = self.reference_chroma(batch, first.shape[0], first.shape[-1])
        for name, wavs in outputs.items():
            chroma = self.model.chroma(wavs)
            for i, wav in enumerate(wavs):
                clips.append(wav)
                captions.append(f"{name}_{i}: {batch['caption'][i]}")
                images.append(
                    chroma_image(reference[i] if reference is not None else None, chroma[i])
                )
        media.log_audio(self.logger, "valid/samples", clips, rate, step, captions)
        media.log_images(self.logger, "valid/chroma", images, step, captions)

    # ---- test / evaluate.py --------------------------------------------------------------

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = fad_sums.configured_embedder(self.evaluation)
        return self._embedder

    def on_test_epoch_start(self) -> None:
        self._sums = {}
        self._start_loss()
        hint = "solver.module.evaluation.{}=PATH"
        clap = build_clap(
            self.evaluation["clap_weights"],
            hint.format("clap_weights"),
            self.evaluation["clap_text"],
        )
        kl = build_kl(self.evaluation["kl_weights"], hint.format("kl_weights"))
        self._clap = {name: ClapScore(clap.model, clap.note) for name in SYSTEMS}
        self._kl = {name: KLDivergence(kl.classifier, note=kl.note) for name in SYSTEMS}

    def _add(self, key: str, values: torch.Tensor) -> None:
        fad_sums.add_sum(self._sums, key, values, self.device)

    def _add_embeddings(self, key: str, wavs: torch.Tensor, lengths: list[int]) -> None:
        fad_sums.add_clip_embeddings(
            self._sums, key, self.embedder, wavs, lengths, self.model.sample_rate, self.device
        )

    def test_step(self, batch: dict, batch_idx: int) -> None:
        size = size_of(batch)
        lengths = [int(n) for n in batch.get("lengths", [batch["audio"].shape[-1]] * size)]
        duration = max(lengths) / self.model.sample_rate
        with self.evaluated():
            self._add_loss(self.loss(batch), size)
            outputs = {"no_melody": self.generate(batch, duration, False)}
            if self.model.has_melody:
                outputs = {"melody": self.generate(batch, duration, True), **outputs}
                for name, metric in self.chroma_metrics(batch, outputs).items():
                    self._add(f"cos:{name}", torch.tensor([metric.cosine_sum, metric.frames]))
        self._add_embeddings("reference", batch["audio"], lengths)
        for name, wavs in outputs.items():
            self._add_embeddings(name, wavs, lengths)
            self._clap[name].update(wavs, self.model.sample_rate, list(batch["caption"]))
            self._kl[name].update(wavs, batch["audio"], self.model.sample_rate, lengths)

    def _reduce_scores(self) -> None:
        """Sum the CLAP and KL accumulators over processes."""
        fields = {ClapScore: ("cosine_sum", "n"), KLDivergence: ("kl_pq_sum", "kl_qp_sum", "n")}
        for metric in (*self._clap.values(), *self._kl.values()):
            names = fields[type(metric)]
            values = torch.tensor([float(getattr(metric, n)) for n in names], device=self.device)
            values = self.trainer.strategy.reduce(values.double(), reduce_op="sum")
            for name, value in zip(names, values.tolist(), strict=True):
                setattr(metric, name, int(value) if name == "n" else value)

    def on_test_epoch_end(self) -> None:
        self._log_eval_loss("test")
        self._sums = sum_tensors(self._sums)  # a rank without items has none of the keys
        self._reduce_scores()
        for name in SYSTEMS:
            if f"cos:{name}" in self._sums:
                total, frames = self._sums[f"cos:{name}"].tolist()
                log_reduced(self, {f"test/chroma_cos_{name}": total / frames})
            if f"fad_n:{name}" in self._sums:
                log_reduced(self, {f"test/fad_{name}": self.fad(name)})

    def fad(self, name: str) -> float:
        """FAD between the generated clips ``name`` and the reference clips (Gaussian fits from
        the summed statistics, so it is the same on one or many processes)."""
        return fad_sums.fad(self._sums, name)

    def evaluation_tables(self) -> list[Table]:
        """The MusicGen paper's Table 1 layout (after ``trainer.test``): ours, with the melody
        and (melody models) the no-melody control, then the published MusicGen rows."""
        embedder = self.embedder.name
        weights = "EMA weights" if self.ema is not None else "weights"
        references = int(self._sums["items:reference"].item())
        rows = []
        for name, label in SYSTEMS.items():
            if f"fad_n:{name}" not in self._sums:
                continue
            cos = self._sums.get(f"cos:{name}")
            rows.append(
                {
                    "system": f"ours, {label} ({weights})",
                    "FAD": self.fad(name),
                    "FAD model": embedder,
                    "n": f"{int(self._sums[f'items:{name}'].item())} generated / {references} reference",
                    "KL": self._kl[name].compute().value,
                    "CLAP_scr": self._clap[name].compute().value,
                    "Cos": (cos[0] / cos[1]).item() if cos is not None else None,
                }
            )
        melody = " and melody" if self.model.has_melody else ""
        notes = (
            f"Ours: one clip per test item from its caption{melody}, as long as the item; FAD "
            f"against the items' audio with the {embedder} embedding (n = clips; FAD depends on "
            "n). Cos = frame-weighted chroma cosine similarity between the output and the melody "
            "condition (the text-only row of a melody model is the control). "
            f"KL: {self._kl['no_melody'].note}. CLAP: {self._clap['no_melody'].note}. " + PAPER_NOTE
        )
        where = self.hparams.dataset_name or "the test set"
        title = f"Text-to-music on {where} (MusicGen Table 1 layout)"
        return [Table("musicgen_table1", title, rows + PAPER_ROWS, notes)]


def loss_metrics(
    stage: str, loss: torch.Tensor, ce_per_codebook: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{stage}/ce``, ``{stage}/ppl`` and per codebook ``ce_q<k>``, ``ppl_q<k>`` (ppl = exp(CE))."""
    metrics = {f"{stage}/ce": loss, f"{stage}/ppl": loss.exp()}
    for k, ce in enumerate(ce_per_codebook):
        metrics |= {f"{stage}/ce_q{k}": ce, f"{stage}/ppl_q{k}": ce.exp()}
    return metrics


def size_of(batch: dict) -> int:
    return len(batch["caption"])
