"""``solver=diffusion``: a MultiBand-Diffusion decoder (arXiv 2308.02560, AudioCraft's diffusion
solver) from the tokens of a frozen codec to audio.

Training: each batch is encoded by the frozen codec with its first ``n_q`` codebooks, the codes
are turned back into the codec's continuous latent (the sum of the chosen codebook entries, what
the codec's own decoder reads), and :meth:`musicgen.diffusion.MultiBandDiffusion.training_loss`
(noise prediction under the power schedule, per band, after the band-energy processor) is
minimised with Adam (AudioCraft's config: lr 2e-4, betas (0.9, 0.999), no weight decay, no
clipping); an EMA copy of the decoder (decay 0.99, every step) is what evaluation and export use.

Validation and test decode the tokens of every item at each entry of ``eval_codebooks`` twice:
with the codec's own decoder and with the diffusion decoder (``sampling.steps`` steps from a fixed
seed), the latter also with its band levels matched to the codec's decoding as AudioCraft's
``tokens_to_wav`` does (``diffusion_eq``), and report mel distance and SI-SNR of both against the input (sums reduced over ranks).
The test also fits embeddings of the reference, codec-decoded and diffusion-decoded audio for FAD
and :meth:`DiffusionSolver.evaluation_tables` lays both decoders out beside MBD's published rows.
"""

from __future__ import annotations

import lightning as L
import torch

from musicgen.compression import CodecConfig, CompressionModel
from musicgen.diffusion import MultiBandDiffusion
from musicgen.diffusion.bands import re_eq
from musicgen.diffusion.decoder import EQ_BANDS
from musicgen.errors import UserError
from musicgen.metrics.audio_quality import MelDistance, si_snr
from musicgen.tables import Table
from solvers import fad_sums, media
from solvers.musicgen import load_codec
from solvers.reduction import log_reduced, sum_tensors, sync_buffers_for_validation
from solvers.schedules import ClipsAtMaxNorm, ema_decay, stepped

# AudioCraft config/solver/diffusion/default.yaml: Adam, lr 2e-4, betas (0.9, 0.999), no weight
# decay, max_norm 0 (no clipping), EMA of the model with decay 0.99 updated every step.
OPTIM = {
    "lr": 2e-4,
    "betas": [0.9, 0.999],
    "weight_decay": 0.0,
    "max_norm": None,
    "warmup_steps": 0,
    "cosine_steps": None,
}
SAMPLING = {"steps": 20, "seed": 0}
EVALUATION = {"fad_embedder": "crepe", "fad_weights": None, "fad_options": {}}
# "diffusion_eq": the diffusion output with its level in 32 mel bands matched to the codec's
# decoding, as AudioCraft's MultiBandDiffusion.tokens_to_wav (and our decode_tokens) returns it.
DECODERS = ("codec", "diffusion", "diffusion_eq")
# Per key: SI-SNR sum, mel distance sum, items.
SUMS = 3

PAPER = "arXiv 2308.02560"
PAPER_NOTE = (
    f"Published rows: MBD ({PAPER}) compares its decoder with EnCodec's on EnCodec 24 kHz tokens "
    "at 1.5, 3 and 6 kbps (the bitrates of AudioCraft's released models, docs/MBD.md) with "
    "listening tests and objective scores, on its own evaluation audio. The public copies we "
    "could search (the arXiv/ar5iv and OpenReview abstracts, AudioCraft's docs/MBD.md, secondary "
    "summaries) do not expose the numbers of its tables (benchmark aggregators list a few values "
    "without the table, bitrate or system they belong to), so these rows name the settings and "
    "leave the values empty rather than guess them; none of its metrics is computed on our test "
    "split anyway."
)
PAPER_ROWS = [
    {
        "system": f"{name} (MBD paper)",
        "kbps": kbps,
        "source": f"{PAPER}: values not found in a readable copy (left empty)",
    }
    for kbps in (1.5, 3.0, 6.0)
    for name in ("EnCodec decoder", "MBD decoder")
]


class DiffusionSolver(ClipsAtMaxNorm, L.LightningModule):
    """Trains a :class:`~musicgen.diffusion.MultiBandDiffusion` on the latents of a frozen codec.

    Arguments are plain containers (saved as hyperparameters): ``diffusion`` holds the
    ``MultiBandDiffusion`` arguments (``sample_rate``, ``channels``, ``latent_dim``, ``hop_length``
    and ``n_q`` default to the codec's and this solver's); ``codec_checkpoint`` the frozen codec (a ``solver=compression`` .ckpt, a saved
    codec folder or an official EnCodec ``.th`` in a local folder); ``codec`` its config when
    rebuilding from this solver's own checkpoint (which holds the codec's weights); ``n_q`` the
    codebooks the decoder is trained on (the bandwidth); ``eval_codebooks`` those evaluated
    (default ``[n_q]``); ``sampling`` the steps and seed of every diffusion decode;
    ``evaluation`` the FAD embedder (as ``solver=musicgen``'s).
    """

    def __init__(
        self,
        diffusion: dict,
        codec_checkpoint: str | None = None,
        codec: dict | None = None,
        n_q: int = 4,
        eval_codebooks: list[int] | None = None,
        optim: dict | None = None,
        ema_decay: float | None = 0.99,
        sampling: dict | None = None,
        evaluation: dict | None = None,
        log_audio_items: int = 2,
        dataset_name: str = "",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # A checkpoint of this solver holds the codec's weights: rebuilding it takes its config.
        model = (
            CompressionModel(CodecConfig.from_dict(codec))
            if codec
            else load_codec(codec_checkpoint)
        )
        self.codec = check_codec(model).eval().requires_grad_(False)
        self.hparams["codec"] = self.codec.config.to_dict()
        self.n_q = n_q
        self.eval_codebooks = sorted(set(eval_codebooks or [n_q]))
        for count in (n_q, *self.eval_codebooks):
            if not 1 <= count <= self.codec.num_codebooks:
                raise UserError(
                    f"solver.module.n_q and eval_codebooks must be in [1, {self.codec.num_codebooks}] "
                    f"(the codec's codebooks), got {count}: fix the override"
                )
        try:
            self.diffusion = MultiBandDiffusion(
                **diffusion_arguments(diffusion, self.codec.config, n_q)
            )
        except (TypeError, ValueError) as err:  # a key or a per-band list that does not fit
            raise UserError(
                f"solver.module.diffusion does not describe a decoder ({err}): fix the override"
            ) from None
        self.hparams["diffusion"] = dict(self.diffusion.config)  # the full config
        self.ema = None
        if ema_decay:
            self.ema = MultiBandDiffusion(**self.hparams["diffusion"]).requires_grad_(False)
            self.ema.load_state_dict(self.diffusion.state_dict())
        self.ema_decay = ema_decay
        self.optim = {**OPTIM, **(optim or {})}
        self.sampling = {**SAMPLING, **(sampling or {})}
        self.evaluation = {**EVALUATION, **(evaluation or {})}
        self.log_audio_items = log_audio_items
        self.mel_distance = MelDistance(self.codec.sample_rate)
        self._embedder = None
        self._totals = torch.zeros(0, dtype=torch.float64)
        self._sums: dict[str, torch.Tensor] = {}
        self._means: dict[str, tuple[float, float, int]] = {}

    # ---- codec tokens ----------------------------------------------------------------------

    @property
    def hop(self) -> int:
        return self.codec.config.hop_length

    @torch.no_grad()
    def tokens_and_latent(self, wav: torch.Tensor, n_q: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``(B, n_q, F)`` of ``wav`` and their continuous latent ``(B, D, F)``."""
        self.codec.eval()
        codes = self.codec.encode(wav, n_q)
        return codes, self.codec.quantizer.vq.decode(codes.transpose(0, 1))

    # ---- training --------------------------------------------------------------------------

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(
            self.diffusion.parameters(),
            lr=self.optim["lr"],
            betas=tuple(self.optim["betas"]),
            weight_decay=self.optim["weight_decay"],
        )
        return stepped(optimizer, self.optim)

    def frame_aligned(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav`` cut to whole codec frames (at least one), so audio and latent line up."""
        frames = max(1, wav.shape[-1] // self.hop)
        return wav[..., : frames * self.hop]

    def loss(self, model: MultiBandDiffusion, wav: torch.Tensor, generator=None) -> torch.Tensor:
        """``model``'s noise-prediction loss on ``wav`` (B, C, T), conditioned on its tokens (and
        on their codec decoding with ``audio_condition``)."""
        wav = self.frame_aligned(wav)
        _, latent = self.tokens_and_latent(wav, self.n_q)
        decoded = None
        if model.audio_condition:
            with torch.no_grad():
                decoded = self.codec.decoder(latent)
        return model.training_loss(wav, latent, generator=generator, decoded=decoded)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self.diffusion, batch["audio"])
        self.log("train/loss", loss.detach(), batch_size=batch["audio"].shape[0], prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self.ema is None:
            return
        decay = ema_decay(self.ema_decay, self.global_step)
        with torch.no_grad():
            for ema_p, p in zip(self.ema.parameters(), self.diffusion.parameters(), strict=True):
                ema_p.lerp_(p.detach(), 1 - decay)
            for ema_b, b in zip(self.ema.buffers(), self.diffusion.buffers(), strict=True):
                ema_b.copy_(b)  # the processor's statistics are running averages already

    @property
    def decoder(self) -> MultiBandDiffusion:
        """The weights evaluated and exported: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.diffusion

    # ---- decoding --------------------------------------------------------------------------

    def generator(self, batch_idx: int) -> torch.Generator:
        """The noise of one evaluation batch: fixed by the seed, the batch and the rank."""
        seed = int(self.sampling["seed"]) + 1_000_003 * batch_idx + self.global_rank
        return torch.Generator(self.device).manual_seed(seed)

    @torch.no_grad()
    def decode_both(self, wav: torch.Tensor, n_q: int, batch_idx: int) -> dict[str, torch.Tensor]:
        """``wav`` coded with ``n_q`` codebooks, decoded by the codec and by the diffusion model
        (each trimmed to ``wav``'s length)."""
        length = wav.shape[-1]
        _, latent = self.tokens_and_latent(wav, n_q)
        codec = self.codec.decoder(latent)[..., :length]
        steps = int(self.sampling["steps"])
        diffusion = self.decoder.sample(
            latent, steps=steps, generator=self.generator(batch_idx), length=length, decoded=codec
        )
        # Item by item (re_eq pools its levels over what it is given): the same on any world size.
        matched = torch.cat(
            [
                re_eq(d[None], c[None].float(), self.codec.sample_rate, EQ_BANDS)
                for d, c in zip(diffusion, codec, strict=True)
            ]
        )
        return {
            "codec": codec,
            "diffusion": diffusion.to(wav.dtype),
            "diffusion_eq": matched.to(wav.dtype),
        }

    # ---- validation / test -----------------------------------------------------------------

    def _keys(self) -> list[str]:
        return [f"{decoder}:{n_q}" for n_q in self.eval_codebooks for decoder in DECODERS]

    def _start(self) -> None:
        """Zero sums on every rank (a rank without items reduces the same tensor): per key
        (SI-SNR, mel, items), then the loss sum and its items."""
        size = len(self._keys()) * SUMS + 2
        self._totals = torch.zeros(size, dtype=torch.float64, device=self.device)

    def _accumulate(self, wav: torch.Tensor, batch_idx: int) -> dict[int, dict[str, torch.Tensor]]:
        decoded = {n_q: self.decode_both(wav, n_q, batch_idx) for n_q in self.eval_codebooks}
        for n_q, outputs in decoded.items():
            for decoder, fake in outputs.items():
                offset = self._keys().index(f"{decoder}:{n_q}") * SUMS
                sisnr, mel = si_snr(fake, wav), self.mel_distance(fake, wav)
                values = torch.stack([sisnr.sum(), mel.sum(), sisnr.new_tensor(len(sisnr))])
                self._totals[offset : offset + SUMS] += values.to(self._totals)
        with torch.no_grad():
            loss = self.loss(self.decoder, wav, self.generator(batch_idx))
        self._totals[-2:] += torch.stack(
            [loss.double() * len(wav), loss.new_tensor(len(wav)).double()]
        )
        return decoded

    def _finish(self, stage: str) -> dict[str, tuple[float, float, int]]:
        """Sum over ranks (every rank calls this) and log ``{stage}/loss`` and, per decoder and
        number of codebooks, ``{stage}/mel_<decoder>_q<n>`` and ``{stage}/sisnr_<decoder>_q<n>``;
        at ``n_q``, also ``{stage}/mel_<decoder>``. Returns the means per key."""
        totals = self.trainer.strategy.reduce(self._totals, reduce_op="sum").tolist()
        means = {}
        for index, key in enumerate(self._keys()):
            sisnr, mel, count = totals[index * SUMS : (index + 1) * SUMS]
            if count:
                means[key] = (sisnr / count, mel / count, int(count))
        if not means:
            return means
        metrics = {f"{stage}/loss": totals[-2] / totals[-1]}
        for key, (sisnr, mel, _) in means.items():
            decoder, n_q = key.split(":")
            metrics |= {
                f"{stage}/mel_{decoder}_q{n_q}": mel,
                f"{stage}/sisnr_{decoder}_q{n_q}": sisnr,
            }
            if int(n_q) == self.n_q:
                metrics[f"{stage}/mel_{decoder}"] = mel
        log_reduced(self, metrics)
        return means

    def on_validation_epoch_start(self) -> None:
        sync_buffers_for_validation(self)
        self._start()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        wav = batch["audio"]
        decoded = self._accumulate(wav, batch_idx)
        if batch_idx == 0 and self.global_rank == 0 and self.log_audio_items:
            self._log_media(
                wav[: self.log_audio_items],
                decoded[self.n_q if self.n_q in decoded else self.eval_codebooks[0]],
            )

    def on_validation_epoch_end(self) -> None:
        self._finish("valid")

    def _log_media(self, real: torch.Tensor, decoded: dict[str, torch.Tensor]) -> None:
        if not media.supports_media(self.logger):
            return
        clips, captions = [], []
        for i, wav in enumerate(real):
            for name, clip in (("original", wav), *((d, decoded[d][i]) for d in DECODERS)):
                clips.append(clip)
                captions.append(f"{name}_{i}")
        step, rate = self.global_step, self.codec.sample_rate
        media.log_audio(self.logger, "valid/audio", clips, rate, step, captions)
        images = [media.spectrogram_image(clip, rate) for clip in clips]
        media.log_images(self.logger, "valid/spectrogram", images, step, captions)

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = fad_sums.configured_embedder(self.evaluation)
        return self._embedder

    def on_test_epoch_start(self) -> None:
        self._start()
        self._sums, self._means = {}, {}

    def _add_embeddings(self, key: str, wavs: torch.Tensor, lengths: list[int]) -> None:
        fad_sums.add_clip_embeddings(
            self._sums, key, self.embedder, wavs, lengths, self.codec.sample_rate, self.device
        )

    def test_step(self, batch: dict, batch_idx: int) -> None:
        wav = batch["audio"]
        lengths = [int(n) for n in batch.get("lengths", [wav.shape[-1]] * len(wav))]
        decoded = self._accumulate(wav, batch_idx)
        self._add_embeddings("reference", wav, lengths)
        for n_q, outputs in decoded.items():
            for decoder, fake in outputs.items():
                self._add_embeddings(f"{decoder}:{n_q}", fake, lengths)

    def on_test_epoch_end(self) -> None:
        self._means = self._finish("test")
        self._sums = sum_tensors(self._sums)  # a rank without items has none of the keys
        fads = {key: self.fad(key) for key in self._keys() if f"fad_n:{key}" in self._sums}
        if fads:
            log_reduced(self, {f"test/fad_{k.replace(':', '_q')}": v for k, v in fads.items()})

    def fad(self, key: str) -> float:
        """FAD between the decoded clips ``key`` and the reference clips (from summed statistics,
        so it is the same on one or many processes)."""
        return fad_sums.fad(self._sums, key)

    def evaluation_tables(self) -> list[Table]:
        """Codec decoder vs diffusion decoder per bandwidth (after ``trainer.test``), then MBD's
        published rows."""
        weights = "EMA weights" if self.ema is not None else "weights"
        steps = int(self.sampling["steps"])
        kind, reads = "MBD decoder", ""
        if self.decoder.audio_condition:  # not MBD: also reads the codec's decoding
            kind, reads = "diffusion post-filter", "reads the codec's decoding, "
        names = {
            "codec": "codec decoder (ours)",
            "diffusion": f"{kind} (ours, {reads}{weights}, {steps} steps)",
            "diffusion_eq": f"{kind} + {EQ_BANDS}-band level match to the codec (as "
            "AudioCraft's tokens_to_wav)",
        }
        references = int(self._sums["items:reference"].item()) if self._sums else 0
        rows = []
        for key, (sisnr, mel, count) in self._means.items():
            decoder, n_q = key.split(":")
            rows.append(
                {
                    "system": names[decoder],
                    "codebooks": int(n_q),
                    "kbps": round(self.codec.config.kbps(int(n_q)), 3),
                    "trained_codebooks": self.n_q if decoder.startswith("diffusion") else None,
                    "mel_distance": mel,
                    "si_snr_db": sisnr,
                    "FAD": self.fad(key) if f"fad_n:{key}" in self._sums else None,
                    "FAD model": self.embedder.name,
                    "n": f"{count} decoded / {references} reference",
                }
            )
        config = self.codec.config
        notes = (
            f"Ours: each test item encoded by the frozen codec ({config.sample_rate} Hz, "
            f"{config.frame_rate:g} frames/s, codebooks of {config.bins}) with the given codebooks, "
            "then decoded by the codec's own decoder and by the diffusion decoder trained on the "
            f"latents of {self.n_q} codebooks (trained_codebooks), from seed "
            f"{self.sampling['seed']}. Mel distance = mean |log10 mel| difference over windows "
            "2^5..2^11 (lower is better); SI-SNR in dB (higher is better); FAD against the items' "
            f"audio with the {self.embedder.name} embedding (n = clips; FAD depends on n). "
            + PAPER_NOTE
        )
        where = self.hparams.dataset_name or "the test set"
        title = f"Codec decoder vs MultiBand-Diffusion decoder on {where}"
        return [Table("diffusion", title, rows + PAPER_ROWS, notes)]


def check_codec(codec: CompressionModel) -> CompressionModel:
    """The codec, when its latent can condition the decoder: not one that rescales its input."""
    if codec.config.normalize or codec.config.segment is not None:
        raise UserError(
            f"the {codec.config.name} codec normalises or segments its input, so its latents carry "
            "no absolute scale and MBD cannot decode them (as in AudioCraft): use a codec without "
            "normalize/segment, e.g. encodec_24khz or a solver=compression checkpoint"
        )
    return codec


def diffusion_arguments(diffusion: dict, codec: CodecConfig, n_q: int) -> dict:
    """``diffusion`` with the codec's rate, channels, latent size and hop and the trained
    codebooks filled in where unset; a value that contradicts them is a :class:`UserError`."""
    own = {
        "sample_rate": codec.sample_rate,
        "channels": codec.channels,
        "latent_dim": codec.dimension,
        "hop_length": codec.hop_length,
        "n_q": n_q,
    }
    arguments = dict(diffusion)
    for name, value in own.items():
        given = arguments.get(name)
        if given is None:
            arguments[name] = value
        elif given != value:
            raise UserError(
                f"solver.module.diffusion.{name}={given} but the codec has {value}: drop the "
                "override (it defaults to the codec's)"
            )
    return arguments
