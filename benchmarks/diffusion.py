"""MultiBand Diffusion decode speed: audio seconds decoded per second at 1/10/20 steps, against
the codec's own decoder and AudioCraft's sampler on the same weights, in the same run.

    python benchmarks/diffusion.py [--configs tiny,tiny_latent,mbd] [--steps 1,10,20] [--device cpu]

* ``tiny``: ``experiment=diffusion_tiny``'s decoder on ``experiment=compression_tiny``'s codec
  (32 kHz, hop 256, 3 codebooks), ``--tiny-seconds`` of audio (default 4). It reads the codec's
  decoding too (``audio_condition``), which AudioCraft's U-Net cannot: ``tiny_latent`` is the
  same decoder conditioned on the latent alone, compared with AudioCraft's sampler.
* ``mbd``: ``solver=diffusion``'s decoder, the architecture of AudioCraft's released
  ``mbd_musicgen_32khz`` (4 bands, 166 M parameters each), on MusicGen's 32 kHz codec (4
  codebooks), ``--mbd-seconds`` of audio (default 0.5: on 2 CPU cores one 20-step decode of a
  second takes minutes).
* Our decode is :func:`musicgen.diffusion.decoder.decode_tokens` (codec latent, the bands'
  reverse processes, the codec decode and re-EQ it matches), batch 1, random weights (speed does
  not depend on them). ``codec`` is the codec decoder on the same tokens.
* ``audiocraft``: AudioCraft's own ``DiffusionUnet`` and ``NoiseSchedule.generate_subsampled``
  (its source, see :mod:`musicgen.diffusion.reference`) looping over the bands as its
  ``MultiBandDiffusion.generate`` does, with our model's weights and the same noise; its result
  must equal our sampler's (``max_abs_diff``); an x0 decoder's prediction is turned into its
  noise for AudioCraft's sampler as ours does. ``audiocraft_over_ours`` = AudioCraft time / our
  sampler's time (sampler alone on both sides, alternated, best of 2 each). Measured at ``--reference-steps`` (default 1 and 20 for tiny, 1
  for mbd) when AudioCraft's source is there.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from musicgen.compression import CodecConfig, CompressionModel
from musicgen.diffusion import MultiBandDiffusion
from musicgen.diffusion.decoder import codec_latent, decode_tokens
from musicgen.diffusion.reference import audiocraft_dir, load_modules
from musicgen.tables import markdown_table
from solvers.runtime import register_resolvers

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIGS = {  # codec overrides, diffusion overrides
    "tiny": (["experiment=compression_tiny"], ["experiment=diffusion_tiny"]),
    "tiny_latent": (
        ["experiment=compression_tiny"],
        ["experiment=diffusion_tiny", "solver.module.diffusion.audio_condition=false"],
    ),
    "mbd": (["solver=compression"], ["solver=diffusion"]),
}


def module_config(overrides: list[str]) -> dict:
    """``solver.module`` of a composed train config."""
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return OmegaConf.to_container(cfg.solver.module, resolve=True)


def build(name: str, device: str) -> tuple[CompressionModel, MultiBandDiffusion, int]:
    """The codec, the diffusion decoder (random weights, fitted processors) and n_q of a config."""
    codec_overrides, diffusion_overrides = CONFIGS[name]
    codec_config = CodecConfig.from_dict(module_config(codec_overrides)["codec"])
    module = module_config(diffusion_overrides)
    torch.manual_seed(0)
    codec = CompressionModel(codec_config).eval()
    diffusion = MultiBandDiffusion(
        **{
            "sample_rate": codec_config.sample_rate,
            "latent_dim": codec_config.dimension,
            "hop_length": codec_config.hop_length,
            "channels": codec_config.channels,
            **module["diffusion"],
            "n_q": module["n_q"],
        }
    )
    wav = 0.1 * torch.randn(2, codec_config.channels, codec_config.sample_rate // 2)
    diffusion.train()
    for band, processor in zip(diffusion.split(wav), diffusion.processors, strict=True):
        processor.project_sample(band)  # statistics, as the first training batches gather them
    return codec.to(device), diffusion.eval().to(device), module["n_q"]


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls of ``fn`` and its last result."""
    times, result = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


class NoiseFromX0(torch.nn.Module):
    """An x0-predicting AudioCraft U-Net seen by AudioCraft's sampler as the noise it implies (the
    conversion our sampler makes, so both sides pay for it)."""

    def __init__(self, model: torch.nn.Module, schedule) -> None:
        super().__init__()
        self.model, self.schedule = model, schedule

    def forward(self, x: torch.Tensor, step: int, condition: torch.Tensor) -> SimpleNamespace:
        x0 = self.model(x, step, condition=condition).sample
        return SimpleNamespace(sample=self.schedule.noise_from_x0(x, step, x0))


def audiocraft_sampler(diffusion: MultiBandDiffusion, device: str):
    """``(latent, steps) -> audio`` with AudioCraft's own modules holding ``diffusion``'s weights."""
    ac_unet, ac_schedule = load_modules()
    models, schedules = [], []
    unets = diffusion.config["unet"]
    for band, ours in enumerate(diffusion.models):
        options = unets if isinstance(unets, dict) else unets[band]
        model = ac_unet.DiffusionUnet(
            chin=diffusion.channels,
            num_steps=diffusion.schedules[band].num_steps,
            codec_dim=diffusion.latent_dim,
            **options,
        )
        model.load_state_dict(ours.state_dict())
        if diffusion.objective == "x0":  # AudioCraft's sampler reads a noise prediction
            model = NoiseFromX0(model, diffusion.schedules[band])
        ours_processor = diffusion.processors[band]
        if hasattr(ours_processor, "counts"):
            processor = ac_schedule.MultiBandProcessor(
                n_bands=ours_processor.n_bands,
                sample_rate=diffusion.sample_rate,
                num_samples=ours_processor.num_samples,
                power_std=float(ours_processor.power_std),
            )
            processor.load_state_dict(ours_processor.state_dict())
        else:
            processor = ac_schedule.SampleProcessor()
        s = diffusion.schedules[band]
        schedules.append(
            ac_schedule.NoiseSchedule(
                beta_t0=s.beta_t0,
                beta_t1=s.beta_t1,
                num_steps=s.num_steps,
                variance=s.variance,
                clip=s.clip,
                rescale=s.rescale,
                beta_exp=s.beta_exp,
                noise_scale=s.noise_scale,
                sample_processor=processor.to(device),
                device=device,
            )  # fmt: skip
        )
        models.append(model.eval().to(device))

    @torch.no_grad()
    def sample(latent: torch.Tensor, steps: int) -> torch.Tensor:
        torch.manual_seed(0)
        out = torch.zeros(
            latent.shape[0],
            diffusion.channels,
            latent.shape[-1] * diffusion.hop_length,
            device=device,
        )
        for model, schedule, ours in zip(models, schedules, diffusion.schedules, strict=True):
            out += schedule.generate_subsampled(
                model,
                initial=torch.randn_like(out),
                step_list=ours.step_list(steps),
                condition=latent,
            )
        return out

    return sample


def ours_sampler(diffusion: MultiBandDiffusion):
    def sample(latent: torch.Tensor, steps: int) -> torch.Tensor:
        torch.manual_seed(0)
        return diffusion.sample(latent, steps)

    return sample


def against_audiocraft(ours, theirs, latent: torch.Tensor, steps: int) -> dict:
    """Speed ratio and largest difference of two samplers, alternated, best of 2 runs each
    (neither pays for the other's warm-up)."""
    times: dict = {ours: [], theirs: []}
    results: dict = {}
    for _ in range(2):
        for sampler in (ours, theirs):
            seconds, results[sampler] = timed(lambda f=sampler: f(latent, steps), 1)
            times[sampler].append(seconds)
    return {
        "audiocraft_over_ours": round(min(times[theirs]) / min(times[ours]), 3),
        "max_abs_diff": float((results[ours] - results[theirs]).abs().max()),
    }


def run(
    name: str, seconds: float, steps: list[int], reference_steps: list[int], args
) -> list[dict]:
    codec, diffusion, n_q = build(name, args.device)
    frames = round(seconds * codec.frame_rate)
    audio = frames * codec.config.hop_length / codec.sample_rate
    codes = torch.randint(0, codec.cardinality, (1, n_q, frames), device=args.device)
    codec.decode(codes)  # warm-up
    codec_time, _ = timed(lambda: codec.decode(codes), args.repeats)
    rows = []
    comparable = audiocraft_dir() and reference_steps and not diffusion.audio_condition
    reference = audiocraft_sampler(diffusion, args.device) if comparable else None
    latent = codec_latent(codec, codes)
    decode_tokens(diffusion, codec, codes, None, 1)  # warm-up (allocations, filters)
    repeats = args.repeats if name.startswith("tiny") else 1
    for count in steps:
        generator = torch.Generator(args.device).manual_seed(0)
        ours_time, _ = timed(
            lambda n=count, g=generator: decode_tokens(diffusion, codec, codes, None, n, g),
            repeats,
        )
        row = {
            "config": name,
            "params_M": round(sum(p.numel() for p in diffusion.parameters()) / 1e6, 1),
            "audio_s": round(audio, 3),
            "steps": count,
            "diffusion_audio_s_per_s": round(audio / ours_time, 4),
            "codec_audio_s_per_s": round(audio / codec_time, 2),
            "codec_over_diffusion": round(ours_time / codec_time, 1),
        }
        if reference is not None and count in reference_steps:
            row |= against_audiocraft(ours_sampler(diffusion), reference, latent, count)
        rows.append(row)
        print(f"{name}: {count} steps done", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", default="tiny,tiny_latent,mbd", help="comma-separated: " + ", ".join(CONFIGS)
    )
    parser.add_argument("--steps", default="1,10,20", help="sampling steps to time")
    parser.add_argument("--tiny-seconds", type=float, default=4.0)
    parser.add_argument("--mbd-seconds", type=float, default=0.5)
    parser.add_argument("--reference-steps", default=None, help="steps timed with AudioCraft too")
    parser.add_argument(
        "--repeats", type=int, default=3, help="tiny: median of this many decodes (mbd: one)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    rows = []
    for name in args.configs.split(","):
        tiny = name.startswith("tiny")
        default = "1,20" if tiny else "1"
        reference_steps = [int(s) for s in (args.reference_steps or default).split(",") if s]
        seconds = args.tiny_seconds if tiny else args.mbd_seconds
        rows += run(name, seconds, steps, reference_steps, args)
    print(markdown_table(rows, list(dict.fromkeys(k for row in rows for k in row))))
    print(
        json.dumps(
            {
                "benchmark": "diffusion",
                "device": args.device,
                "threads": torch.get_num_threads(),
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
