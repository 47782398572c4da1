"""MusicGen LM speed on CPU: ours against ``transformers``' MusicGen decoder in the same run.

    python benchmarks/musicgen_lm.py [--quick] [--configs tiny small]

Both models get the same configuration (``transformers.MusicgenForCausalLM`` from a
``MusicgenDecoderConfig`` of equal width, depth, heads, feed-forward, codebooks and card; SDPA
attention; random weights; no conditioning, no text encoder) and the same delayed token layout:

* training: frames/s (and tokens/s = frames x codebooks) of forward + backward + AdamW step on a
  fixed batch of random codes; ours is ``MusicLM.compute_loss`` (which also builds the delay
  pattern), theirs the forward with ``labels`` (pattern built beforehand, outside the timing);
* generation: frames/s of a fixed-duration generation (top-k 250 sampling), with and without the
  KV cache; ours is ``MusicLM.generate``, theirs ``MusicgenForCausalLM.generate`` with
  ``max_length = frames + codebooks`` (the same number of decoding steps).

The two implementations alternate for ``--rounds`` rounds (one for the small config, whose run
takes minutes); medians are compared. ``ratio`` =
ours / theirs (higher is better); ``cache_speedup`` = cached / uncached generation of the same
implementation. Threads: ``torch.get_num_threads()`` (set OMP_NUM_THREADS). Prints a table, then
one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from musicgen.lm import DelayPattern, LMConfig, MusicLM
from musicgen.tables import markdown_table

CONFIGS = {
    # experiment=musicgen_tiny: 4 codebooks of 256 (the tiny codec), dim 128, 3 layers of 4 heads
    "tiny": LMConfig(card=256, dim=128, num_heads=4, num_layers=3, ffn_dim=512),
    # the same LM over MusicGen's 32 kHz codec (4 codebooks of 2048): the heads dominate
    "tiny_card2048": LMConfig(card=2048, dim=128, num_heads=4, num_layers=3, ffn_dim=512),
    "small": LMConfig(),  # MusicGen-small: dim 1024, 24 layers, 16 heads, card 2048
}
# (batch, frames, timed steps) for training and (batch, frames) for generation, per config;
# 375 frames = the tiny preset's 3 s segments at the tiny codec's 125 Hz.
SIZES = {
    "tiny": {"train": (4, 375, 5), "generate": (1, 250)},
    "tiny_card2048": {"train": (4, 375, 5), "generate": (1, 250)},
    "small": {"train": (2, 100, 2), "generate": (1, 50)},
}
QUICK_SIZES = {
    "tiny": {"train": (4, 375, 2), "generate": (1, 250)},
    "tiny_card2048": {"train": (4, 375, 2), "generate": (1, 250)},
    "small": {"train": (1, 50, 1), "generate": (1, 20)},
}
TARGETS = {"train_ratio": 1.5, "generate_cached_ratio": 2.0, "cache_speedup_250": 5.0}


def their_model(cfg: LMConfig) -> torch.nn.Module:
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    config = MusicgenDecoderConfig(
        vocab_size=cfg.card,
        max_position_embeddings=4096,
        num_hidden_layers=cfg.num_layers,
        ffn_dim=cfg.ffn_dim,
        num_attention_heads=cfg.num_heads,
        hidden_size=cfg.dim,
        num_codebooks=cfg.n_q,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        pad_token_id=cfg.card,
        bos_token_id=cfg.card,
        eos_token_id=None,
        decoder_start_token_id=cfg.card,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    return MusicgenForCausalLM(config)


def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """MusicGen's AdamW, the same (multi-tensor) implementation for both."""
    return torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True
    )


def train_steps(name: str, cfg: LMConfig, model: torch.nn.Module, codes: torch.Tensor) -> Callable:
    """A closure running one training step of ``model`` on ``codes (B, K, T)``."""
    opt = optimizer(model)
    if name == "ours":

        def loss() -> torch.Tensor:
            return model.compute_loss(codes).loss

    else:
        seq, mask = DelayPattern(cfg.n_q, cfg.delays).build(codes, cfg.card)
        inputs = seq[:, :, :-1].reshape(-1, seq.shape[2] - 1)
        labels = seq[:, :, 1:].masked_fill(~mask[:, 1:], -100).transpose(1, 2).contiguous()

        def loss() -> torch.Tensor:
            return model(input_ids=inputs, labels=labels).loss

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    return step


def generate_call(
    name: str, cfg: LMConfig, model: torch.nn.Module, batch: int, frames: int, cache: bool
) -> Callable:
    """A closure generating ``frames`` frames (returns the codes ``(B, K, frames)``)."""
    if name == "ours":
        return lambda: model.generate(
            batch_size=batch, num_frames=frames, top_k=250, use_cache=cache, cfg_coef=1.0
        )
    start = torch.full((batch * cfg.n_q, 1), cfg.card)
    return lambda: model.generate(
        input_ids=start,
        max_length=frames + cfg.n_q,
        min_length=frames + cfg.n_q,
        do_sample=True,
        top_k=250,
        use_cache=cache,
        guidance_scale=None,
        num_return_sequences=1,
        num_beams=1,
    )


def timed(fn: Callable, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_config(key: str, sizes: dict, rounds: int) -> list[dict]:
    cfg = CONFIGS[key]
    torch.manual_seed(0)
    models = {"ours": MusicLM(cfg), "transformers": their_model(cfg)}
    rows = []
    batch, frames, steps = sizes["train"]
    codes = torch.randint(0, cfg.card, (batch, cfg.n_q, frames))
    for model in models.values():
        model.train()
    runs = {name: train_steps(name, cfg, model, codes) for name, model in models.items()}
    for run in runs.values():
        run()  # warm-up (allocates the optimizer state)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(timed(run, steps))
    for name, model in models.items():
        seconds = statistics.median(times[name])
        rows.append(
            {
                "config": key,
                "impl": name,
                "task": "train",
                "batch": batch,
                "frames": frames,
                "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                "seconds": round(seconds, 4),
                "frames_per_s": round(batch * frames / seconds, 1),
                "tokens_per_s": round(batch * frames * cfg.n_q / seconds, 1),
            }
        )
    del runs  # frees the optimizer states
    for model in models.values():
        model.zero_grad(set_to_none=True)
    gc.collect()
    batch, frames = sizes["generate"]
    for cache in (True, False):
        calls = {}
        for name, model in models.items():
            model.eval()
            calls[name] = generate_call(name, cfg, model, batch, frames, cache)
            out = calls[name]()
            assert tuple(out.shape) == (batch, cfg.n_q, frames), (name, tuple(out.shape))
        times = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                times[name].append(timed(call, 1))
        for name in calls:
            seconds = statistics.median(times[name])
            rows.append(
                {
                    "config": key,
                    "impl": name,
                    "task": "generate" + ("_cached" if cache else "_uncached"),
                    "batch": batch,
                    "frames": frames,
                    "seconds": round(seconds, 4),
                    "frames_per_s": round(batch * frames / seconds, 1),
                    "tokens_per_s": round(batch * frames * cfg.n_q / seconds, 1),
                }
            )
    return rows


def ratios(rows: list[dict]) -> dict:
    """ours / transformers per (config, task), and cached / uncached per (config, impl)."""
    speed = {(r["config"], r["task"], r["impl"]): r["frames_per_s"] for r in rows}
    out = {}
    for config, task, impl in speed:
        if impl == "ours":
            out[f"{config}/{task}/ours_over_transformers"] = round(
                speed[config, task, "ours"] / speed[config, task, "transformers"], 2
            )
        if task == "generate_cached":
            out[f"{config}/{impl}/cache_speedup"] = round(
                speed[config, task, impl] / speed[config, "generate_uncached", impl], 2
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short sequences, fewer steps")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternations (default 3, 1 quick)"
    )
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    sizes = QUICK_SIZES if args.quick else SIZES
    rounds = args.rounds or (1 if args.quick else 3)
    rows = []
    for key in args.configs:
        rows += bench_config(key, sizes[key], rounds if key.startswith("tiny") else 1)
        gc.collect()
    columns = [
        "config",
        "task",
        "impl",
        "batch",
        "frames",
        "seconds",
        "frames_per_s",
        "tokens_per_s",
    ]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(markdown_table(rows, columns))
    summary = ratios(rows)
    for name, value in summary.items():
        print(f"{name}: {value}")
    print(
        json.dumps(
            {
                "benchmark": "musicgen_lm",
                "threads": torch.get_num_threads(),
                "quick": args.quick,
                "rows": rows,
                "ratios": summary,
                "targets": TARGETS,
            }
        )
    )


if __name__ == "__main__":
    main()
