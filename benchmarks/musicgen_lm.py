"""MusicGen LM speed on CPU: ours against ``transformers``' and AudioCraft's MusicGen decoders in
the same run.

    python benchmarks/musicgen_lm.py [--quick] [--configs tiny small] [--layers N]

The three models get the same configuration (width, depth, heads, feed-forward, codebooks, card,
no biases, pre-norm, random weights) and the same text condition as the text-only MusicGen
models read it: cross-attention in every layer on ``(B, 16, dim)`` random encoder states (T5's
projected output), all valid. Ours is ``MusicLM`` with ``cross_attention=True``; transformers'
is ``MusicgenForCausalLM`` (SDPA attention, its default dynamic KV cache, the cross-attention
keys/values cached after the first step: the decoder of ``MusicgenForConditionalGeneration``,
fed the encoder states directly; ``cache_implementation="static"`` fails in its MusicGen
``generate`` with transformers 5.25, an IndexError one position past the cache); AudioCraft's is
``LMModel`` (``transformer_lm`` with ``cross_attention``, its streaming KV cache, torch
attention as on CPU), whose condition provider hands over the same states.

* training (``train``): frames/s of forward + backward + AdamW step on a fixed batch of random
  codes; ours is ``MusicLM.compute_loss`` (which also builds the delay pattern), transformers'
  the forward with ``labels`` (pattern built beforehand), AudioCraft's ``compute_predictions``
  plus its solver's per-codebook cross-entropy. ``<impl>-bf16`` rows run the same under CPU
  bf16 autocast (the weights stay float32; ours' loss difference from float32 is printed; the
  peers' rows show what the same switch gives them). Each round builds
  each implementation's optimizer, runs one warm-up step, then the timed steps, and frees the
  optimizer again (three optimizers of the small shape do not fit in memory together).
* generation (``generate_b<B>``): frames/s of a fixed-duration generation, batch ``B``, with
  classifier-free guidance (coefficient 3, conditional and null rows in one batch, as released;
  the null states are zeros), top-k 250 sampling, KV cache on, the same number of decoding
  steps for all (``frames + codebooks - 1``). Ours also runs its generation copies
  (``MusicLM.for_generation``): ``ours-packed`` (float32, the linear weights reordered by
  oneDNN for few-row products), ``ours-bf16`` (bf16 linear weights, bf16 autocast) and
  ``ours-int8`` (dynamic int8 linear layers); their conversion time is printed, not timed, and
  their greedy agreement with float32 (50 steps) and logits difference are printed.
  ``generate_uncached`` (tiny configs only) is batch 1 without the KV cache.

Implementations alternate for ``--rounds`` rounds (one for the small config, whose run takes
minutes); medians are compared. Speeds (``frames_per_s``) and the ratios are per second of this
process's CPU time, which other jobs on a shared machine change far less than the wall time
(``seconds``; both are printed). ``ratio`` = ours / theirs (higher is better). Threads:
``torch.get_num_threads()`` (set OMP_NUM_THREADS). AudioCraft's rows are skipped, with the
reason printed, when it is not importable. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import logging
import os
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from musicgen.lm import DelayPattern, LMConfig, MusicLM
from musicgen.tables import markdown_table

CONFIGS = {
    # experiment=musicgen_tiny's sizes: 4 codebooks of 256 (the tiny codec), dim 128, 3 layers
    "tiny": LMConfig(card=256, dim=128, num_heads=4, num_layers=3, ffn_dim=512),
    # the same LM over MusicGen's 32 kHz codec (4 codebooks of 2048): the heads dominate
    "tiny_card2048": LMConfig(card=2048, dim=128, num_heads=4, num_layers=3, ffn_dim=512),
    "small": LMConfig(),  # MusicGen-small: dim 1024, 24 layers, 16 heads, card 2048
}
CONDITION_LENGTH = 16  # text condition positions (T5 tokens of a short caption)
CFG_COEF = 3.0
# (batch, frames, timed steps) for training, generation batches and frames, per config
SIZES = {
    "tiny": {"train": (4, 375, 5), "generate": ((1, 4), 250)},
    "tiny_card2048": {"train": (4, 375, 5), "generate": ((1, 4), 250)},
    "small": {"train": (4, 100, 2), "generate": ((1, 4), 50)},
}
QUICK_SIZES = {
    "tiny": {"train": (4, 375, 2), "generate": ((1, 4), 100)},
    "tiny_card2048": {"train": (4, 375, 2), "generate": ((1, 4), 100)},
    "small": {"train": (4, 25, 1), "generate": ((1, 4), 10)},
}
TARGETS = {
    "cache_speedup_250": 5.0,
    "train_ratio_transformers": 1.5,
    "train_ratio_audiocraft": 1.5,
    "generate_ratio_transformers": 2.0,
    "generate_ratio_audiocraft": 1.5,
}
AUDIOCRAFT_MISSING = (
    "pip install --no-deps audiocraft==1.3.0 flashy==0.0.2 num2words dora-search treetable "
    "retrying colorlog"
)


# ----------------------------------------------------------------------------- the peers
def transformers_model(cfg: LMConfig) -> torch.nn.Module:
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


def import_audiocraft() -> types.SimpleNamespace | str:
    """AudioCraft's LM modules, or why they cannot be imported. The modules it imports only for
    paths this benchmark does not take (xformers, spaCy, PyAV) get empty stand-ins during the
    import; its optional CLAP import is skipped (laion_clap fetches a tokenizer when imported)."""
    if importlib.util.find_spec("audiocraft") is None:
        return f"audiocraft is not installed ({AUDIOCRAFT_MISSING})"
    stubs: dict[str, types.ModuleType | None] = {}
    for name in ("xformers", "xformers.ops", "spacy", "av"):
        if name not in sys.modules and importlib.util.find_spec(name.split(".")[0]) is None:
            stubs[name] = types.ModuleType(name)
    if "xformers" in stubs:
        stubs["xformers"].ops = stubs["xformers.ops"]
    if "laion_clap" not in sys.modules:
        stubs["laion_clap"] = None
    sys.modules.update(stubs)
    try:
        from audiocraft.models.lm import LMModel
        from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
        from audiocraft.modules.conditioners import ConditionFuser, ConditioningAttributes
    except Exception as err:  # a missing dependency of AudioCraft's, of any kind
        return f"audiocraft is not importable ({type(err).__name__}: {err})"
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(
        LMModel=LMModel,
        DelayedPatternProvider=DelayedPatternProvider,
        ConditionFuser=ConditionFuser,
        ConditioningAttributes=ConditioningAttributes,
    )


class FixedConditions(torch.nn.Module):
    """AudioCraft's condition-provider interface (``tokenize``, then the call) handing over
    given text states: ``states (2B, P, dim)`` for a CFG batch (conditional then null rows),
    the first ``B`` rows for training."""

    def __init__(self, attributes: type) -> None:
        super().__init__()
        self.states: torch.Tensor | None = None
        self.caption = lambda: attributes(text={"description": "a caption"})

    def tokenize(self, conditions: list) -> int:
        return len(conditions)

    def forward(self, rows: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        states = self.states[:rows]
        return {"description": (states, torch.ones(states.shape[:2], dtype=torch.long))}


def audiocraft_model(ac: types.SimpleNamespace, cfg: LMConfig) -> torch.nn.Module:
    """AudioCraft's ``transformer_lm`` as musicgen-small's config builds it, at ``cfg``'s sizes."""
    fuser = ac.ConditionFuser({"cross": ["description"], "prepend": [], "sum": []})
    return ac.LMModel(
        ac.DelayedPatternProvider(cfg.n_q),
        FixedConditions(ac.ConditioningAttributes),
        fuser,
        n_q=cfg.n_q,
        card=cfg.card,
        dim=cfg.dim,
        num_heads=cfg.num_heads,
        num_layers=cfg.num_layers,
        hidden_scale=cfg.ffn_dim // cfg.dim,
        norm="layer_norm",
        norm_first=True,
        bias_proj=False,
        bias_ff=False,
        bias_attn=False,
        cross_attention=True,
        causal=True,
        dropout=0.0,
        positional_embedding="sin",
        weight_init="gaussian",
        depthwise_init="current",
        zero_bias_init=True,
        cfg_coef=CFG_COEF,
    )


# ------------------------------------------------------------------------------ training
def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """MusicGen's AdamW, the same (fused) implementation for all: on CPU it takes 1/7 of the
    multi-tensor one's time and none of its full-size temporaries."""
    return torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True
    )


def loss_fn(name: str, cfg: LMConfig, model: torch.nn.Module, codes: torch.Tensor, states):
    """A closure computing the training loss of ``model`` on ``codes (B, K, T)`` given the text
    ``states (B, P, dim)``; a ``-bf16`` name runs under CPU bf16 autocast."""
    if name.endswith("-bf16"):
        exact = loss_fn(name.removesuffix("-bf16"), cfg, model, codes, states)

        def loss() -> torch.Tensor:
            with torch.autocast("cpu", torch.bfloat16):
                return exact()

    elif name == "ours":

        def loss() -> torch.Tensor:
            return model.compute_loss(codes, states).loss

    elif name == "transformers":
        seq, mask = DelayPattern(cfg.n_q, cfg.delays).build(codes, cfg.card)
        inputs = seq[:, :, :-1].reshape(-1, seq.shape[2] - 1)
        labels = seq[:, :, 1:].masked_fill(~mask[:, 1:], -100).transpose(1, 2).contiguous()

        def loss() -> torch.Tensor:
            return model(input_ids=inputs, encoder_hidden_states=states, labels=labels).loss

    else:  # AudioCraft: compute_predictions and its solver's _compute_cross_entropy

        def loss() -> torch.Tensor:
            out = model.compute_predictions(codes, [], model.condition_provider(len(codes)))
            terms = [
                F.cross_entropy(out.logits[:, k][out.mask[:, k]], codes[:, k][out.mask[:, k]])
                for k in range(cfg.n_q)
            ]
            return torch.stack(terms).mean()

    return loss


def train_step(model: torch.nn.Module, loss: Callable) -> Callable[[], float]:
    """A closure running one training step (AdamW) of ``model``; returns the loss."""
    opt = optimizer(model)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        opt.step()
        return float(value)

    return step


def bf16_loss_diff(model: MusicLM, sizes: tuple, states: torch.Tensor) -> float:
    """|loss under bf16 autocast - float32 loss| of ``model`` on a batch of random codes."""
    batch, frames, _ = sizes
    codes = torch.randint(0, model.config.card, (batch, model.config.n_q, frames))
    with torch.no_grad():
        exact = model.compute_loss(codes, states[:batch]).loss
        with torch.autocast("cpu", torch.bfloat16):
            fast = model.compute_loss(codes, states[:batch]).loss
    return round(abs(float(fast) - float(exact)), 5)


def timed(fn: Callable, repeats: int) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds of each of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    """Median wall and median CPU seconds."""
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def bench_train(cfg: LMConfig, models: dict, sizes: tuple, rounds: int, states) -> dict:
    """Median (wall, CPU) seconds per training step by implementation."""
    batch, frames, steps = sizes
    codes = torch.randint(0, cfg.card, (batch, cfg.n_q, frames))
    times: dict[str, list] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            model.train()
            step = train_step(model, loss_fn(name, cfg, model, codes, states[:batch]))
            step()  # warm-up: allocates the gradients and the optimizer state
            times[name] += timed(step, steps)
            del step  # frees the optimizer state
            model.zero_grad(set_to_none=True)
            gc.collect()
    return {name: medians(t) for name, t in times.items()}


# ---------------------------------------------------------------------------- generation
def generate_call(
    name: str, cfg: LMConfig, model: torch.nn.Module, batch: int, frames: int, cache: bool, states
) -> Callable:
    """A closure generating ``frames`` frames with CFG (returns codes ``(B, K, frames)``);
    ``states (2B, P, dim)``: conditional then null rows."""
    cond, null = states[:batch], torch.zeros_like(states[:batch])
    if name.startswith("ours"):
        return lambda: model.generate(
            cond, None, null, None, num_frames=frames, top_k=250, use_cache=cache, cfg_coef=CFG_COEF
        )
    if name == "transformers":
        start = torch.full((batch * cfg.n_q, 1), cfg.card)
        both = torch.cat([cond, null])
        return lambda: model.generate(
            input_ids=start,
            encoder_hidden_states=both,
            max_length=frames + cfg.n_q,
            min_length=frames + cfg.n_q,
            do_sample=True,
            top_k=250,
            use_cache=cache,
            guidance_scale=CFG_COEF,
            num_return_sequences=1,
            num_beams=1,
        )

    provider = model.condition_provider

    def audiocraft() -> torch.Tensor:
        provider.states = torch.cat([cond, null])
        captions = [provider.caption() for _ in range(batch)]
        return model.generate(conditions=captions, max_gen_len=frames, top_k=250)

    return audiocraft


def agreement(model: MusicLM, fast: MusicLM, states: torch.Tensor, steps: int = 50) -> dict:
    """Greedy CFG generation of ``fast`` vs ``model`` (batch 1, ``steps`` frames): the share of
    equal tokens, and the max abs logits difference on a teacher-forced sequence."""
    cond, null = states[:1], torch.zeros_like(states[:1])
    kwargs = {"num_frames": steps, "temperature": 0.0, "cfg_coef": CFG_COEF}
    ref = model.generate(cond, None, null, None, **kwargs)
    out = fast.generate(cond, None, null, None, **kwargs)
    seq = model.pattern.build(ref, model.special)[0]
    with torch.no_grad():
        expected = model(seq, cond)
        with fast.precision_context():
            diff = (expected - fast(seq, cond).float()).abs().max()
    return {
        "greedy_agreement": round(float((ref == out).float().mean()), 3),
        "logits_max_diff": round(float(diff), 4),
    }


def bench_generate(cfg, models, sizes, rounds, states, uncached: bool) -> dict:
    """Median (wall, CPU) seconds per generation by (task, implementation)."""
    batches, frames = sizes
    tasks = [(f"generate_b{b}", b, True) for b in batches]
    if uncached:
        tasks.append(("generate_uncached", 1, False))
    out = {}
    for task, batch, cache in tasks:
        calls = {}
        for name, model in models.items():
            if not cache and (name.startswith("ours-") or name == "audiocraft"):
                continue  # AudioCraft's generate always streams (KV cache)
            model.eval()
            calls[name] = generate_call(name, cfg, model, batch, frames, cache, states)
            codes = calls[name]()
            assert tuple(codes.shape) == (batch, cfg.n_q, frames), (name, tuple(codes.shape))
        times: dict[str, list] = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                times[name] += timed(call, 1)
        out.update({(task, name): medians(t) for name, t in times.items()})
    return out


# ---------------------------------------------------------------------------------- main
def bench_config(key: str, cfg: LMConfig, sizes: dict, rounds: int, ac, precisions) -> tuple:
    torch.manual_seed(0)
    cfg = dataclasses.replace(cfg, cross_attention=True)
    models = {"ours": MusicLM(cfg), "transformers": transformers_model(cfg)}
    if not isinstance(ac, str):
        models["audiocraft"] = audiocraft_model(ac, cfg)
    max_batch = max(sizes["train"][0], *sizes["generate"][0])
    states = torch.randn(2 * max_batch, CONDITION_LENGTH, cfg.dim)
    if "audiocraft" in models:
        models["audiocraft"].condition_provider.states = states
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    rows, notes = [], {}

    train_models = dict(models)
    if "bfloat16" in precisions:
        train_models.update({f"{name}-bf16": model for name, model in models.items()})
    batch, frames, _ = sizes["train"]
    if "ours-bf16" in train_models:
        notes["train_bf16_loss_diff"] = bf16_loss_diff(models["ours"], sizes["train"], states)
    seconds = bench_train(cfg, train_models, sizes["train"], rounds, states)
    for name, s in seconds.items():
        rows.append(row(key, "train", name, batch, frames, s, cfg, params.get(name)))
    gc.collect()

    gen_models = dict(models)
    for precision in precisions:
        start = time.perf_counter()
        fast = models["ours"].eval().for_generation(precision)
        notes[f"convert_{precision}_s"] = round(time.perf_counter() - start, 2)
        notes[precision] = agreement(models["ours"], fast, states)
        gen_models[f"ours-{PRECISION_NAMES[precision]}"] = fast
    batches, frames = sizes["generate"]
    uncached = key.startswith("tiny")
    timings = bench_generate(cfg, gen_models, sizes["generate"], rounds, states, uncached)
    for (task, name), s in timings.items():
        batch = 1 if task == "generate_uncached" else int(task.removeprefix("generate_b"))
        rows.append(row(key, task, name, batch, frames, s, cfg, params.get(name)))
    return rows, notes


PRECISION_NAMES = {"float32": "packed", "bfloat16": "bf16", "int8": "int8"}


def row(key, task, impl, batch, frames, seconds, cfg, params) -> dict:
    """A table row; ``seconds``: (wall, CPU); the speeds are per CPU second."""
    wall, cpu = seconds
    return {
        "config": key,
        "task": task,
        "impl": impl,
        "batch": batch,
        "frames": frames,
        "params_M": None if params is None else round(params / 1e6, 1),
        "seconds": round(wall, 4),
        "cpu_seconds": round(cpu, 4),
        "frames_per_s": round(batch * frames / cpu, 2),
        "tokens_per_s": round(batch * frames * cfg.n_q / cpu, 1),
    }


def ratios(rows: list[dict]) -> dict:
    """ours (and its variants) / each peer per (config, task); cached (batch 1) / uncached
    generation per (config, implementation)."""
    speed = {(r["config"], r["task"], r["impl"]): r["frames_per_s"] for r in rows}
    out = {}
    for config, task, impl in speed:
        if task == "generate_uncached":
            value = speed[config, "generate_b1", impl] / speed[config, task, impl]
            out[f"{config}/{impl}/cache_speedup"] = round(value, 2)
        if not impl.startswith("ours"):
            continue
        peers = ["transformers", "audiocraft"]
        if impl.endswith("-bf16"):  # also against the peers under the same autocast
            peers += ["transformers-bf16", "audiocraft-bf16"]
        for peer in peers:
            if (config, task, peer) in speed:
                value = speed[config, task, impl] / speed[config, task, peer]
                out[f"{config}/{task}/{impl}_over_{peer}"] = round(value, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short sequences, fewer steps")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--layers", type=int, default=None, help="override the depth (trials)")
    parser.add_argument(
        "--precisions",
        nargs="*",
        default=["float32", "bfloat16", "int8"],
        choices=["float32", "bfloat16", "int8"],
        help="our generation copies (and bf16 autocast training) to time besides float32",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternations (default 3, 1 quick)"
    )
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    sizes = QUICK_SIZES if args.quick else SIZES
    rounds = args.rounds or (1 if args.quick else 3)
    ac = import_audiocraft()
    if isinstance(ac, str):
        print(f"AudioCraft rows skipped: {ac}")
    rows, notes = [], {}
    for key in args.configs:
        cfg = CONFIGS[key]
        if args.layers:
            cfg = dataclasses.replace(cfg, num_layers=args.layers)
        config_rounds = rounds if key.startswith("tiny") else 1
        config_rows, notes[key] = bench_config(
            key, cfg, sizes[key], config_rounds, ac, args.precisions
        )
        rows += config_rows
        gc.collect()
    columns = [
        "config",
        "task",
        "impl",
        "batch",
        "frames",
        "seconds",
        "cpu_seconds",
        "frames_per_s",
    ]
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {load:.2f}")
    print(markdown_table(rows, columns))
    summary = ratios(rows)
    for name, value in {**summary, **notes}.items():
        print(f"{name}: {value}")
    print(
        json.dumps(
            {
                "benchmark": "musicgen_lm",
                "threads": torch.get_num_threads(),
                "load_average": round(load, 2),
                "quick": args.quick,
                "layers": args.layers,
                "rows": rows,
                "ratios": summary,
                "notes": notes,
                "targets": TARGETS,
            }
        )
    )


if __name__ == "__main__":
    main()
