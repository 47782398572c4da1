"""Codec speed on CPU: encode/decode real-time factor per config, and our training step against a
plain-PyTorch loop over the same modules, in the same run.

    python benchmarks/compression.py [--seconds 4] [--steps 10] [--rounds 2]

* RTF = audio duration / processing time (> 1 is faster than real time), batch of 1, all codebooks,
  median of ``--repeats`` runs, for ``solver=compression``, ``solver=compression_encodec24`` and
  ``experiment=compression_tiny``.
* Training step: ``CompressionSolver.training_step`` driven by a Lightning ``Trainer`` (manual
  optimisation, logging, codebook metrics) against a hand-written loop doing the same work with
  the same modules (codec, MS-STFT discriminator, losses, balancer, Adam, generator EMA) and no
  framework, on the tiny preset's model and an in-memory batch (no data loading). Blocks of
  ``--steps`` steps alternate between the two for ``--rounds`` rounds; per-step medians are compared.
  ``speed_ratio`` = reference time / our time (>= 0.95 is the target).

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from musicgen.compression import CodecConfig, CompressionModel
from musicgen.losses import discriminator_hinge_loss, feature_matching_loss, generator_hinge_loss
from musicgen.tables import markdown_table
from solvers.compression import CompressionSolver
from solvers.runtime import register_resolvers

CONFIGS = {
    "compression": ["solver=compression"],
    "compression_encodec24": ["solver=compression_encodec24"],
    "compression_tiny": ["experiment=compression_tiny"],
}


def solver_kwargs(overrides: list[str]) -> tuple[dict, dict]:
    """``(solver.module kwargs, solver.data)`` of a composed train config."""
    register_resolvers()
    with initialize_config_dir(
        str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"
    ):
        cfg = compose("train", overrides=overrides)
    module = OmegaConf.to_container(cfg.solver.module, resolve=True)
    module.pop("_target_")
    return module, OmegaConf.to_container(cfg.solver.data, resolve=True)


def music_like(batch: int, channels: int, length: int, rate: int, seed: int = 0) -> torch.Tensor:
    """Decaying harmonic notes plus a little noise: deterministic test audio."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / rate
    wav = torch.zeros(batch, channels, length)
    for b in range(batch):
        for _ in range(6):
            f0 = 110 * 2 ** (torch.randint(0, 36, (1,), generator=g).item() / 12)
            onset = torch.rand(1, generator=g).item() * t[-1].item()
            env = torch.exp(-4 * (t - onset).clamp_min(0)) * (t >= onset)
            wav[b] += sum(0.1 / k * torch.sin(2 * torch.pi * k * f0 * t) for k in range(1, 4)) * env
    return wav + 0.003 * torch.randn(wav.shape, generator=g)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def codec_rtf(name: str, seconds: float, repeats: int) -> dict:
    module, _ = solver_kwargs(CONFIGS[name])
    config = CodecConfig.from_dict(module["codec"])
    torch.manual_seed(0)
    model = CompressionModel(config)
    wav = music_like(1, config.channels, int(seconds * config.sample_rate), config.sample_rate)
    model(wav)  # k-means initialises the codebooks
    model.eval()
    codes = model.encode(wav)
    model.decode(codes)  # warm-up
    encode = median_time(lambda: model.encode(wav), repeats)
    decode = median_time(lambda: model.decode(codes), repeats)
    return {
        "config": name,
        "sample_rate": config.sample_rate,
        "kbps": round(config.kbps(config.n_q), 3),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "encode_rtf": round(seconds / encode, 2),
        "decode_rtf": round(seconds / decode, 2),
    }


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self.start)


class Repeat(torch.utils.data.IterableDataset):
    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


def lightning_steps(solver: CompressionSolver, batch: dict, steps: int) -> list[float]:
    """Per-batch times of ``steps`` training batches of ``solver`` in a fresh Trainer."""
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=2 * steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[timer],
        limit_val_batches=0,
    )
    trainer.fit(solver, torch.utils.data.DataLoader(Repeat(batch), batch_size=None))
    return timer.times


class PlainLoop:
    """The same training step as the solver's, written directly against the modules."""

    def __init__(self, solver: CompressionSolver) -> None:
        self.s = solver
        self.opt_g = torch.optim.Adam(
            solver.model.parameters(), lr=solver.optim["lr"], betas=tuple(solver.optim["betas"])
        )
        self.opt_d = torch.optim.Adam(
            solver.discriminator.parameters(),
            lr=solver.optim["lr"],
            betas=tuple(solver.optim["betas"]),
        )
        self.step_count = 0

    def step(self, real: torch.Tensor) -> None:
        s = self.s
        out = s.model(real, random.Random(self.step_count).choice(s.codebooks))
        disc = s.discriminator
        d_loss = discriminator_hinge_loss(disc(real)[0], disc(out.audio.detach())[0])
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        disc.requires_grad_(False)
        with torch.no_grad():
            _, real_maps = disc(real)
        fake_logits, fake_maps = disc(out.audio)
        losses = {
            "adv": generator_hinge_loss(fake_logits),
            "feat": feature_matching_loss(real_maps, fake_maps),
            "msspec": s.msspec(out.audio, real),
            "l1": F.l1_loss(out.audio, real),
        }
        surrogate, _ = s.balancer(losses, out.audio)
        self.opt_g.zero_grad()
        (surrogate + s.commitment_weight * out.commitment).backward()
        self.opt_g.step()
        disc.requires_grad_(True)
        self.step_count += 1
        decay = min(s.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            for ema_p, p in zip(s.ema.parameters(), s.model.parameters(), strict=True):
                ema_p.lerp_(p, 1 - decay)
            for ema_b, b in zip(s.ema.buffers(), s.model.buffers(), strict=True):
                ema_b.copy_(b)

    def times(self, real: torch.Tensor, steps: int) -> list[float]:
        """Per-step times of ``steps`` steps, drawing codebooks like a fresh Trainer run does."""
        self.step_count, out = 0, []
        for _ in range(steps):
            start = time.perf_counter()
            self.step(real)
            out.append(time.perf_counter() - start)
        return out


def train_step_ratio(steps: int, rounds: int, warmup: int = 3) -> dict:
    module, data = solver_kwargs(
        [*CONFIGS["compression_tiny"], "solver.module.adversarial_warmup=0"]
    )
    module["opus_baseline"] = False
    codec = module["codec"]
    real = music_like(
        8,
        codec["channels"],
        int(data["segment_seconds"] * codec["sample_rate"]),
        codec["sample_rate"],
    )
    solvers = []
    for _ in range(2):
        torch.manual_seed(0)
        solver = CompressionSolver(**module).train()
        solver.model(real)  # k-means initialises every codebook before anything is timed
        solvers.append(solver)
    ours, plain = solvers[0], PlainLoop(solvers[1])
    lightning_steps(ours, {"audio": real}, warmup)
    plain.times(real, warmup)
    ours_times, plain_times = [], []
    for _ in range(rounds):
        ours_times += lightning_steps(ours, {"audio": real}, steps)
        plain_times += plain.times(real, steps)
    ours_s, plain_s = statistics.median(ours_times), statistics.median(plain_times)
    return {
        "config": "compression_tiny",
        "batch": tuple(real.shape),
        "steps": len(ours_times),
        "ours_s": round(ours_s, 4),
        "reference_s": round(plain_s, 4),
        "speed_ratio": round(plain_s / ours_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="audio length for the RTF")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="training steps per block")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rtf = [codec_rtf(name, args.seconds, args.repeats) for name in CONFIGS]
    train = train_step_ratio(args.steps, args.rounds)
    print(
        f"## Codec real-time factor on CPU ({torch.get_num_threads()} threads, {args.seconds:g} s of audio)\n"
    )
    print(markdown_table(rtf, list(rtf[0])))
    print("## Training step: CompressionSolver in Lightning vs a plain PyTorch loop\n")
    print(markdown_table([train], list(train)))
    print(
        json.dumps(
            {
                "benchmark": "compression",
                "threads": torch.get_num_threads(),
                "rtf": rtf,
                "train_step": train,
            }
        )
    )


if __name__ == "__main__":
    main()
