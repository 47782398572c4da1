"""``MultiBandDiffusion``: codec latent -> waveform with one diffusion U-Net per frequency band.

As in MBD (arXiv 2308.02560) and AudioCraft: the waveform is split into ``n_bands`` mel bands
(:mod:`musicgen.diffusion.bands`); band ``b``'s model learns to denoise that band, at the full
sample rate, after its optional energy equalisation (:mod:`musicgen.diffusion.processor`),
conditioned on the codec's continuous latent (B, latent_dim, frames) of the quantized tokens,
which its U-Net projects and resizes to its bottleneck. Sampling starts every band from
full-band white noise, runs each band's reverse process, undoes its equalisation and sums the
bands (AudioCraft's ``MultiBandDiffusion.generate``).

``unet``, ``schedule`` and ``processor`` are AudioCraft's ``diffusion_unet``, ``schedule`` and
``processor`` configs: one dict for all bands, or a list of one dict per band (the released
models equalise only their upper bands). ``objective`` is what the U-Nets predict: ``noise``
(MBD's and AudioCraft's, the default) or ``x0``, the clean band (an option of ours; the sampler
turns its prediction into the noise it implies, so the chain is the same). ``audio_condition``
(ours, default off) also gives each U-Net the same band of the codec decoder's output on the same
tokens, as extra input channels beside the noisy band (equalised by the band's processor, as the
noisy band): the model then refines the codec's own decoding (a diffusion post-filter) instead of
decoding the latent alone. With ``x0`` as well, the U-Net's output is added to that band: it
predicts the codec's error, and a U-Net that predicts no correction returns the codec's decoding
(through the processors' round trip).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from musicgen.diffusion.bands import band_splitter
from musicgen.diffusion.processor import build_processor
from musicgen.diffusion.schedule import NoiseSchedule
from musicgen.diffusion.unet import DiffusionUnet


def per_band(value: dict | Sequence[dict], n_bands: int, name: str) -> list[dict]:
    """``value`` as one dict per band (a single dict is shared by all bands)."""
    if isinstance(value, dict):
        return [dict(value) for _ in range(n_bands)]
    items = [dict(item) for item in value]
    if len(items) != n_bands:
        raise ValueError(f"{name} has {len(items)} per-band configs for {n_bands} bands")
    return items


def randn(
    shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Standard Gaussian noise of ``shape`` with ``like``'s dtype and device, drawn from
    ``generator`` (on its own device) when given."""
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    return torch.randn(shape, generator=generator, device=generator.device).to(like)


def randint(
    high: int, count: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """``count`` integers uniform in ``[0, high)`` on ``device`` (from ``generator`` when given)."""
    if generator is None:
        return torch.randint(0, high, (count,), device=device)
    return torch.randint(0, high, (count,), generator=generator, device=generator.device).to(device)


OBJECTIVES = ("noise", "x0")


class MultiBandDiffusion(nn.Module):
    """One conditional diffusion U-Net per band (see the module docstring).

    ``hop_length`` is the codec's samples per latent frame, ``n_q`` the codebooks whose latent
    it was trained on (None: unrecorded), ``cutoffs`` optional band edges in Hz (default:
    mel-spaced), ``channels`` the audio channels, ``objective`` ``noise`` or ``x0`` and
    ``audio_condition`` (see the module docstring). :attr:`config` holds these arguments.
    """

    def __init__(
        self,
        sample_rate: int,
        n_bands: int,
        latent_dim: int,
        hop_length: int,
        unet: dict | Sequence[dict],
        schedule: dict | Sequence[dict],
        processor: dict | Sequence[dict],
        channels: int = 1,
        n_q: int | None = None,
        cutoffs: Sequence[float] | None = None,
        objective: str = "noise",
        audio_condition: bool = False,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        unets = per_band(unet, n_bands, "unet")
        schedules = per_band(schedule, n_bands, "schedule")
        processors = per_band(processor, n_bands, "processor")
        self.config = {
            "sample_rate": sample_rate,
            "n_bands": n_bands,
            "latent_dim": latent_dim,
            "hop_length": hop_length,
            "unet": unet if isinstance(unet, dict) else unets,
            "schedule": schedule if isinstance(schedule, dict) else schedules,
            "processor": processor if isinstance(processor, dict) else processors,
            "channels": channels,
            "n_q": n_q,
            "cutoffs": None if cutoffs is None else list(cutoffs),
            "objective": objective,
            "audio_condition": audio_condition,
        }
        self.objective, self.audio_condition = objective, audio_condition
        self.sample_rate, self.n_bands, self.channels = sample_rate, n_bands, channels
        self.latent_dim, self.hop_length, self.n_q = latent_dim, hop_length, n_q
        self.schedules = [NoiseSchedule(**options) for options in schedules]
        self.models = nn.ModuleList(
            DiffusionUnet(
                chin=channels * (2 if audio_condition else 1),
                chout=channels,
                num_steps=s.num_steps,
                codec_dim=latent_dim,
                **options,
            )
            for s, options in zip(self.schedules, unets, strict=True)
        )
        self.processors = nn.ModuleList(build_processor(sample_rate, **p) for p in processors)
        self.splitter = band_splitter(sample_rate, n_bands, cutoffs) if n_bands > 1 else None

    def split(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav`` (B, C, T) as its ``(n_bands, B, C, T)`` bands."""
        return wav[None] if self.splitter is None else self.splitter(wav)

    def _check(self, latent: torch.Tensor) -> None:
        if latent.dim() != 3 or latent.shape[1] != self.latent_dim:
            raise ValueError(
                f"expected a codec latent of shape (batch, {self.latent_dim}, frames), "
                f"got {tuple(latent.shape)}"
            )

    def _condition_bands(
        self, decoded: torch.Tensor | None, shape: Sequence[int]
    ) -> list[torch.Tensor | None]:
        """Per band, the codec decoding's band the U-Net reads beside its input (``audio_condition``;
        ``decoded`` (B, C, T) cut or zero-padded to ``shape``), else None for every band."""
        if not self.audio_condition:
            return [None] * self.n_bands
        if decoded is None:
            raise ValueError("this decoder reads the codec's decoded audio: pass decoded")
        if decoded.dim() != 3 or tuple(decoded.shape[:2]) != tuple(shape[:2]):
            raise ValueError(
                f"expected the codec's decoded audio of shape {tuple(shape[:2])} + (samples,), "
                f"got {tuple(decoded.shape)}"
            )
        decoded = F.pad(decoded[..., : shape[-1]], (0, max(0, shape[-1] - decoded.shape[-1])))
        return list(self.split(decoded))

    def _predict(
        self,
        model: nn.Module,
        x: torch.Tensor,
        step: int | torch.Tensor,
        latent: torch.Tensor,
        condition: torch.Tensor | None,
    ) -> torch.Tensor:
        """``model``'s prediction for the noisy band ``x``: of the noise or the clean band (then,
        with ``audio_condition``, as a correction to the codec's band ``condition``, which is in
        the diffusion space: projected by the band's processor, as ``x``)."""
        if condition is None:
            return model(x, step, latent)
        condition = condition.to(x)
        prediction = model(torch.cat([x, condition], dim=1), step, latent)
        return prediction + condition if self.objective == "x0" else prediction

    def training_loss(
        self,
        wav: torch.Tensor,
        latent: torch.Tensor,
        generator: torch.Generator | None = None,
        decoded: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prediction MSE (of the noise, or of the clean band for ``objective`` x0) summed over
        bands (each band's U-Net gets the gradient of its own loss, as when AudioCraft trains the
        bands separately): each item of ``wav`` (B, C, T) is noised to its own random step (one
        step per batch when ``variable_step_batch`` is off). ``decoded``: the codec's decoding of
        the same tokens, needed with ``audio_condition``."""
        self._check(latent)
        total = wav.new_zeros(())
        conditions = self._condition_bands(decoded, wav.shape)
        for band, condition, model, processor, schedule in zip(
            self.split(wav), conditions, self.models, self.processors, self.schedules, strict=True
        ):
            x = processor.project_sample(band, randn(band.shape, band, generator))
            if condition is not None:  # the codec's band, equalised as its target
                condition = processor.project_sample(condition, update=False)
            count = len(x) if schedule.variable_step_batch else 1
            steps = randint(schedule.num_steps, count, x.device, generator).expand(len(x))
            noise = randn(x.shape, x, generator)
            noisy = schedule.noisy(x, steps, noise)
            target = x if self.objective == "x0" else noise
            prediction = self._predict(model, noisy, steps, latent, condition)
            total = total + F.mse_loss(prediction, target)
        return total

    def sample(
        self,
        latent: torch.Tensor,
        steps: int = 20,
        generator: torch.Generator | None = None,
        progress: bool = False,
        length: int | None = None,
        decoded: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Audio ``(B, channels, length)`` (default ``frames * hop_length``) decoded from the
        codec ``latent`` (B, latent_dim, frames) with ``steps`` denoising steps per band
        (20: MBD's default chain 999, 949, ..., 49), under ``torch.inference_mode`` (the result
        is an ordinary tensor). Items are batched; the bands run one after the other, drawing
        their noise in AudioCraft's order. Reproducible for a ``generator``. ``decoded``: the
        codec's decoding of the same tokens, needed with ``audio_condition``."""
        self._check(latent)
        shape = (latent.shape[0], self.channels, length or latent.shape[-1] * self.hop_length)
        conditions = self._condition_bands(decoded, shape)
        chains = [s.step_list(steps) for s in self.schedules]
        bar = tqdm(
            total=sum(len(c) - 1 for c in chains),
            disable=None if progress else True,  # progress: on a terminal only
            desc="diffusion",
            unit="step",
        )
        with bar, torch.inference_mode():
            out = latent.new_zeros(shape)
            for model, processor, schedule, chain, condition in zip(
                self.models, self.processors, self.schedules, chains, conditions, strict=True
            ):
                if condition is not None:  # the codec's band, equalised as in training
                    condition = processor.project_sample(condition, update=False)

                def denoise(
                    x: torch.Tensor,
                    step: int,
                    model: nn.Module = model,
                    schedule=schedule,
                    condition: torch.Tensor | None = condition,
                ) -> torch.Tensor:
                    bar.update()
                    prediction = self._predict(model, x, step, latent, condition)
                    if self.objective == "x0":
                        return schedule.noise_from_x0(x, step, prediction)
                    return prediction

                initial = randn(shape, out, generator)
                z = schedule.generate_subsampled(
                    denoise, initial, chain, lambda x: randn(x.shape, x, generator)
                )
                out += processor.return_sample(z)
        return out.clone()  # outside inference mode: usable in autograd and in place
