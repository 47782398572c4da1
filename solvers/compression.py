"""``solver=compression``: train and evaluate an EnCodec-style codec (arXiv 2210.13438, AudioCraft).

Each training batch, with a number of codebooks drawn from ``codebooks`` (quantizer dropout):

1. the generator (codec) reconstructs the batch;
2. the MS-STFT discriminator takes one hinge-loss step on real vs. reconstructed audio;
3. the generator takes one step on the balanced gradient of its losses (adversarial hinge,
   relative feature matching, multi-scale mel, time-domain L1) plus the commitment loss,
   which is outside the balancer;
4. the generator's EMA copy is updated (the discriminator has none).

Under data parallelism every rank makes the update one process would make on the union of the
ranks' batches (``loader.global_batches=true`` even gives the same batches on any number of
processes): codebook statistics and the balancer's gradient norms are those of the union batch,
relative feature matching divides by the union batch's feature sizes, and the codec's random
draws (k-means initialisation, dead-code refills) are seeded from the run's seed and the
generator step (the number of codebooks is drawn from the step).

Lightning's ``global_step`` counts optimizer steps, and every batch steps both optimizers, so
``trainer.max_steps`` is **twice the number of generator steps** (and checkpoint intervals
count the same way); the ``step`` of logged metrics counts batches, i.e. generator steps.
Validation and test encode/decode with the EMA generator at every entry of ``codebooks``; the
test also codes each item with Opus (ffmpeg/libopus) and
:meth:`CompressionSolver.evaluation_tables` lays the results out beside the paper's figures.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from musicgen.compression import CodecConfig, CompressionModel, codebook_stats
from musicgen.compression.ranks import mean_over_ranks
from musicgen.errors import UserError
from musicgen.losses import (
    Balancer,
    MultiScaleMelLoss,
    discriminator_hinge_loss,
    feature_matching_loss,
    feature_scales,
    generator_hinge_loss,
    ms_stft_discriminator,
)
from musicgen.metrics.audio_quality import MelDistance, si_snr
from musicgen.opus import MIN_KBPS, opus_roundtrip
from musicgen.tables import Table
from solvers import media
from solvers.reduction import log_reduced, sync_buffers_for_validation
from solvers.schedules import ema_decay, lr_lambda

LOSS_WEIGHTS = {"adv": 4.0, "feat": 4.0, "msspec": 2.0, "l1": 0.1}
BALANCER = {"total_norm": 1.0, "ema_decay": 0.999, "per_item": True}
DISCRIMINATOR = {"filters": 32, "n_ffts": [1024, 2048, 512, 256, 128]}
MSSPEC = {"scales": [5, 6, 7, 8, 9, 10, 11], "n_mels": 64, "alpha": 1.0}
OPTIM = {"lr": 3e-4, "betas": [0.5, 0.9], "max_norm": None, "warmup_steps": 0, "cosine_steps": None}

# arXiv 2210.13438, Table 3: 6 kbps, 24 kHz, an equal mix of speech and music.
PAPER_ROWS = [
    {"system": "EnCodec, streamable (paper)", "kbps": 6.0, "si_snr_db": 6.67},
    {"system": "EnCodec, non-streamable (paper)", "kbps": 6.0, "si_snr_db": 7.46},
    {"system": "Opus (paper)", "kbps": 6.0, "si_snr_db": 2.45},
]
PAPER_NOTE = (
    "Paper rows: arXiv 2210.13438 Table 3 (SI-SNR at 6 kbps on 24 kHz audio, an equal mix of "
    "speech and music; the paper reports no mel distance). Their test audio is not ours: they are "
    "reference points, not a like-for-like comparison."
)


class CompressionSolver(L.LightningModule):
    """Generator = :class:`~musicgen.compression.CompressionModel`, adversary = MS-STFT discriminator.

    Arguments are plain containers (they are saved as hyperparameters): ``codec`` holds
    :class:`~musicgen.compression.CodecConfig` fields; ``codebooks`` the numbers of codebooks
    used in training (drawn uniformly per batch) and evaluated; ``losses`` the balancer weights
    (``adv``, ``feat``, ``msspec``, ``l1``); ``ema_decay`` None disables the generator EMA;
    ``adversarial_warmup`` generator steps learn from the reconstruction losses alone (the
    discriminator trains meanwhile); ``opus_baseline`` False skips Opus in the test loop.
    """

    def __init__(
        self,
        codec: dict,
        codebooks: list[int],
        losses: dict | None = None,
        commitment_weight: float = 1.0,
        balancer: dict | None = None,
        discriminator: dict | None = None,
        msspec: dict | None = None,
        optim: dict | None = None,
        ema_decay: float | None = 0.99,
        adversarial_warmup: int = 0,
        opus_baseline: bool = True,
        log_audio_items: int = 2,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        config = CodecConfig.from_dict(codec)
        self.save_hyperparameters()
        self.hparams["codec"] = config.to_dict()  # the full config, defaults included
        if not codebooks or not all(1 <= n <= config.n_q for n in codebooks):
            raise UserError(
                f"solver.module.codebooks must be numbers in [1, {config.n_q}] (codec.n_q), got {codebooks}: fix the override"
            )
        self.codebooks = sorted(codebooks)
        self.weights = {**LOSS_WEIGHTS, **(losses or {})}
        self.optim = {**OPTIM, **(optim or {})}
        self.commitment_weight = commitment_weight
        self.ema_decay, self.adversarial_warmup = ema_decay, adversarial_warmup
        self.opus_baseline, self.log_audio_items = opus_baseline, log_audio_items

        self.model = CompressionModel(config)
        self.ema = CompressionModel(config).requires_grad_(False) if ema_decay else None
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())
        disc = {**DISCRIMINATOR, **(discriminator or {})}
        self.discriminator = ms_stft_discriminator(config.channels, disc["filters"], disc["n_ffts"])
        self.balancer = Balancer(self.weights, **{**BALANCER, **(balancer or {})})
        spec = {**MSSPEC, **(msspec or {})}
        self.msspec = MultiScaleMelLoss(
            config.sample_rate, spec["scales"], spec["n_mels"], spec["alpha"]
        )
        self.mel_distance = MelDistance(config.sample_rate)
        self._results: dict[str, torch.Tensor] = {}
        self.seed = torch.initial_seed()  # the run's seed: train.py seeds before building solvers

    @property
    def config(self) -> CodecConfig:
        return self.model.config

    @property
    def generator_steps(self) -> int:
        """Generator updates so far (each batch steps the generator and the discriminator once)."""
        return self.global_step // 2

    def configure_optimizers(self):
        optimizers = [
            torch.optim.Adam(
                module.parameters(), lr=self.optim["lr"], betas=tuple(self.optim["betas"])
            )
            for module in (self.model, self.discriminator)
        ]
        factor = lr_lambda(self.optim["warmup_steps"], self.optim["cosine_steps"])
        return optimizers, [LambdaLR(opt, factor) for opt in optimizers]

    # ---- training ------------------------------------------------------------------------

    def _clip(self, optimizer) -> None:
        if self.optim["max_norm"]:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.optim["max_norm"], gradient_clip_algorithm="norm"
            )

    def _update(self, optimizer, scheduler, loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        self._clip(optimizer)
        optimizer.step()
        scheduler.step()

    def generator_losses(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """The balanced losses (those with a positive weight) of reconstruction ``fake``."""
        losses: dict[str, torch.Tensor] = {}
        adversarial = self.weights["adv"] > 0 or self.weights["feat"] > 0
        if adversarial and self.generator_steps >= self.adversarial_warmup:
            with torch.no_grad():
                _, real_maps = self.discriminator(real)
            fake_logits, fake_maps = self.discriminator(fake.float())
            losses["adv"] = generator_hinge_loss(fake_logits)
            # relative to the union batch's feature sizes, as one process would scale them
            scales = mean_over_ranks(feature_scales(real_maps))
            losses["feat"] = feature_matching_loss(real_maps, fake_maps, scales=scales)
        losses["msspec"] = self.msspec(fake, real)
        losses["l1"] = F.l1_loss(fake.float(), real)
        return {name: loss for name, loss in losses.items() if self.weights[name] > 0}

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        real = batch["audio"]
        n_q = random.Random(self.generator_steps).choice(
            self.codebooks
        )  # same draw on every rank and on resume
        with self._step_rng():
            out = self.model(real, n_q)

        # The discriminator always steps (even at zero adversarial weight) so that global_step = 2 x generator steps.
        with self.toggled_optimizer(opt_d):
            real_logits, _ = self.discriminator(real)
            fake_logits, _ = self.discriminator(out.audio.detach().float())
            d_loss = discriminator_hinge_loss(real_logits, fake_logits)
            self._update(opt_d, sched_d, d_loss)
        with self.toggled_optimizer(
            opt_g
        ):  # the discriminator is frozen while the generator learns from it
            losses = self.generator_losses(real, out.audio)
            surrogate, norms = self.balancer(losses, out.audio)
            self._update(opt_g, sched_g, surrogate + self.commitment_weight * out.commitment)
        self._update_ema()

        metrics = {f"train/{name}": loss.detach() for name, loss in losses.items()}
        metrics |= {f"train/grad_norm_{name}": norm for name, norm in norms.items()}
        metrics |= {f"train/{k}": v for k, v in codebook_stats(out.codes, self.config.bins).items()}
        metrics |= {
            "train/d_loss": d_loss.detach(),
            "train/commitment": out.commitment.detach(),
            "train/dead_codes": self.model.quantizer.dead_codes().float(),
            "train/kbps": self.config.kbps(n_q),
        }
        self.log_dict(metrics, batch_size=real.shape[0])

    @contextmanager
    def _step_rng(self) -> Iterator[None]:
        """The global RNG seeded from the run's seed and the generator step, restored after: the
        codebooks' k-means initialisation and dead-code refills draw the same on any number of
        processes (Lightning's DDP set-up re-seeds the global RNG after the weights were drawn,
        one process does not) and on resume."""
        devices = [self.device] if self.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed((self.seed + self.generator_steps) % 2**63)
            yield

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        step = self.generator_steps  # already counts this update
        decay = ema_decay(self.ema_decay, step)
        for ema_p, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            ema_p.lerp_(p, 1 - decay)
        for ema_b, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            ema_b.copy_(b)  # codebooks already are moving averages

    # ---- evaluation ----------------------------------------------------------------------

    @property
    def generator(self) -> CompressionModel:
        """The weights evaluated and exported: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.model

    def _codec_metrics(self, real: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per number of codebooks: per-item (SI-SNR, mel distance) of encode -> decode."""
        results = {}
        for n_q in self.codebooks:
            fake = self.generator.decode(self.generator.encode(real, n_q), real.shape[-1])
            results[n_q] = (si_snr(fake, real), self.mel_distance(fake, real))
        return results

    def _result_keys(self, stage: str) -> list[str]:
        """The stage's accumulators: ours per number of codebooks, and (test) Opus per bitrate."""
        keys = [f"ours:{n_q}" for n_q in self.codebooks]
        if stage == "test" and self.opus_baseline:
            keys += [f"opus:{kbps}" for kbps in self.opus_rates()]
        return keys

    def _start(self, stage: str) -> None:
        """Zero sums (SI-SNR, mel distance, kbps, items) for every key, on every rank, so that a
        rank without samples reduces the same tensors as the others."""
        self._results = {
            key: torch.zeros(4, dtype=torch.float64, device=self.device)
            for key in self._result_keys(stage)
        }

    def _add(self, key: str, sisnr: torch.Tensor, mel: torch.Tensor, kbps: torch.Tensor) -> None:
        sums = torch.stack(
            [sisnr.sum(), mel.sum(), kbps.to(sisnr).sum(), sisnr.new_tensor(len(sisnr))]
        )
        self._results[key] += sums.to(self._results[key])

    def _add_codec(self, real: torch.Tensor) -> None:
        for n_q, (sisnr, mel) in self._codec_metrics(real).items():
            self._add(f"ours:{n_q}", sisnr, mel, torch.full_like(sisnr, self.config.kbps(n_q)))

    def _finish(self, stage: str) -> None:
        """Sum the accumulators over ranks (one all-reduce, every rank) and log the means over
        all items: ``{stage}/sisnr_q<n>``, ``{stage}/mel_q<n>`` and, at the most codebooks,
        ``{stage}/sisnr`` and ``{stage}/mel``. Nothing is logged when no rank had an item."""
        keys = list(self._results)
        totals = self.trainer.strategy.reduce(
            torch.stack([self._results[k] for k in keys]), reduce_op="sum"
        )
        self._results = dict(zip(keys, totals, strict=True))
        if self._results[f"ours:{self.codebooks[-1]}"][3] == 0:
            return
        metrics = {}
        for n_q in self.codebooks:
            sisnr, mel, _, count = self._results[f"ours:{n_q}"].tolist()
            metrics |= {f"{stage}/sisnr_q{n_q}": sisnr / count, f"{stage}/mel_q{n_q}": mel / count}
        most = self.codebooks[-1]
        log_reduced(self, metrics | {f"{stage}/sisnr": metrics[f"{stage}/sisnr_q{most}"]})
        log_reduced(
            self, {f"{stage}/mel": metrics[f"{stage}/mel_q{most}"]}, prog_bar=stage == "valid"
        )

    def on_validation_epoch_start(self) -> None:
        sync_buffers_for_validation(self)
        self._start("valid")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real = batch["audio"]
        self._add_codec(real)
        if batch_idx == 0 and self.global_rank == 0:
            self._log_media(real[: self.log_audio_items])

    def on_validation_epoch_end(self) -> None:
        self._finish("valid")

    def _log_media(self, real: torch.Tensor) -> None:
        if not media.supports_media(self.logger):
            return
        fake = self.generator.decode(self.generator.encode(real), real.shape[-1])
        clips = [clip for pair in zip(real, fake, strict=True) for clip in pair]
        captions = [f"{kind}_{i}" for i in range(real.shape[0]) for kind in ("original", "decoded")]
        step, rate = self.generator_steps, self.config.sample_rate
        media.log_audio(self.logger, "valid/audio", clips, rate, step, captions)
        images = [media.spectrogram_image(clip, rate) for clip in clips]
        media.log_images(self.logger, "valid/spectrogram", images, step, captions)

    def opus_rates(self) -> list[float]:
        """Opus bitrates matching ours (Opus' minimum, 6 kbps, for those below it)."""
        return sorted({max(MIN_KBPS, round(self.config.kbps(n_q), 3)) for n_q in self.codebooks})

    def on_test_epoch_start(self) -> None:
        self._start("test")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        real = batch["audio"]
        self._add_codec(real)
        if self.opus_baseline:
            for kbps in self.opus_rates():
                coded = [opus_roundtrip(item, self.config.sample_rate, kbps) for item in real]
                fake = torch.stack([audio for audio, _ in coded])
                measured = torch.tensor([rate for _, rate in coded])
                self._add(
                    f"opus:{kbps}", si_snr(fake, real), self.mel_distance(fake, real), measured
                )

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def evaluation_tables(self) -> list[Table]:
        """Our codec per bitrate, Opus at matching bitrates and the paper's figures (after ``trainer.test``)."""
        rows = []
        for key, (sisnr, mel, kbps, count) in ((k, v.tolist()) for k, v in self._results.items()):
            if not count:  # an empty split
                continue
            kind, setting = key.split(":")
            ours = kind == "ours"
            name = "ours (EMA weights)" if self.ema is not None else "ours"
            rows.append(
                {
                    "system": name if ours else "Opus (libopus, CBR)",
                    "codebooks": int(setting) if ours else None,
                    "kbps": round(self.config.kbps(int(setting)), 3) if ours else float(setting),
                    "measured_kbps": kbps / count,
                    "si_snr_db": sisnr / count,
                    "mel_distance": mel / count,
                    "items": int(count),
                }
            )
        rows.sort(key=lambda row: (row["kbps"], row["system"]))
        notes = (
            f"Codec: {self.config.sample_rate} Hz, {self.config.channels} channel(s), {self.config.frame_rate:g} frames/s, "
            f"codebooks of {self.config.bins}. SI-SNR in dB (higher is better); "
            "mel distance = mean |log10 mel| difference over windows 2^5..2^11 (lower is better). "
            f"Opus (ffmpeg/libopus, constant bitrate) at our bitrates, or at its {MIN_KBPS:g} kbps minimum for lower ones; "
            "its measured kbps includes the Ogg container. " + PAPER_NOTE
        )
        return [
            Table(
                "compression",
                "Codec quality per bitrate, with Opus and the EnCodec paper",
                rows + PAPER_ROWS,
                notes,
            )
        ]
