"""Every config value a user can mistype is one ``error:`` line and exit 2 before anything heavy runs
(issue 14 item 4): the documented keys swept with wrong types and out-of-range values through
Hydra's compose API and the validator, and a handful through the real ``train.py``/``evaluate.py``."""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from data.decode import SampleSpec
from data.streams import EvalStream, TrainStream
from musicgen.errors import UserError
from solvers.runtime import register_resolvers
from solvers.validate_config import RULES, validate_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# The error comes right after the imports (Lightning: ~3 s on a quiet machine, 18 s on this shared
# 2-core one under load); the limit only catches a hang (a bad batch size used to hang forever).
CLI_LIMIT_S = 120

# key -> (solver whose config has it, bad values as typed on the command line)
WRONG_TYPE = ["abc", "true", "[1,2]"]
SWEEP: dict[str, tuple[str, list[str]]] = {
    "seed": ("compression", ["-1", "1.5", "4294967296", *WRONG_TYPE]),
    "run.resume": ("compression", ["maybe", "1"]),
    "loader.batch_size": ("compression", ["0", "-3", "2.5", "null", *WRONG_TYPE]),
    "loader.eval_batch_size": ("compression", ["0", "1.5", "abc"]),
    "loader.num_workers": ("compression", ["-1", "1.5", *WRONG_TYPE]),
    "loader.shuffle_buffer": ("compression", ["-1", "0.5", "abc"]),
    "loader.train_batches_per_epoch": ("compression", ["0", "-1", "2.5", *WRONG_TYPE]),
    "loader.global_batches": ("compression", ["maybe", "1"]),
    "checkpoint.every_n_train_steps": ("compression", ["-1", "0", "1.5", "abc"]),
    "checkpoint.every_minutes": ("compression", ["0", "-5", "inf", "abc"]),
    "checkpoint.save_top_k": ("compression", ["-1", "1.5", "abc"]),
    "trainer.max_steps": ("compression", ["0", "-2", "1.5", "abc"]),
    "trainer.max_epochs": ("compression", ["0", "-2", "1.5", "abc"]),
    "trainer.log_every_n_steps": ("compression", ["0", "-1", "abc"]),
    "trainer.check_val_every_n_epoch": ("compression", ["0", "abc"]),
    "trainer.num_sanity_val_steps": ("compression", ["-2", "abc"]),
    "trainer.gradient_clip_val": ("musicgen", ["-1", "abc"]),
    "trainer.precision": ("compression", ["8", "fp16", "true"]),
    "trainer.accelerator": ("compression", ["quantum", "1"]),
    "trainer.devices": ("compression", ["0", "-2", "abc", "1.5", "[]"]),
    "trainer.num_nodes": ("compression", ["0", "abc"]),
    "solver.data.sample_rate": ("compression", ["0", "-16000", "16000.5", "abc"]),
    "solver.data.channels": ("compression", ["0", "3", "1.5", "abc"]),
    "solver.data.segment_seconds": ("compression", ["0", "-1", "inf", "nan", "abc", "null"]),
    "solver.data.eval_segment_seconds": ("compression", ["0", "-4", "abc"]),
    "solver.data.eval_crop": ("compression", ["random", "middle", "1"]),
    "solver.data.fields": ("musicgen", ["[caption]", "[audio,audio]", "[audio,lyrics]", "audio"]),
    "solver.module.optim.lr": ("compression", ["0", "-1", "inf", "abc", "null"]),
    "solver.module.optim.betas": ("compression", ["[0.9]", "[0.9,1.0]", "[-0.1,0.9]", "0.9"]),
    "solver.module.optim.weight_decay": ("musicgen", ["-0.1", "abc"]),
    "solver.module.optim.warmup_steps": ("musicgen", ["-1", "1.5", "abc"]),
    "solver.module.optim.cosine_steps": ("musicgen", ["0", "-1", "abc"]),
    "solver.module.optim.max_norm": ("musicgen", ["0", "-1", "abc"]),
    "solver.module.optim.name": ("mt3", ["sgd", "1"]),
    "solver.module.optim.adamw.betas": ("mt3", ["[0.9,1.5]", "abc"]),
    "solver.module.optim.adamw.weight_decay": ("mt3", ["-1", "abc"]),
    "solver.module.model.dropout": ("mt3", ["-0.1", "1.5", "abc"]),
    "solver.module.lm.dropout": ("musicgen", ["-0.1", "2", "abc"]),
    "solver.module.cfg_dropout": ("musicgen", ["1.1", "abc"]),
    "solver.module.melody_dropout": ("musicgen_melody", ["-1", "abc"]),
    "solver.module.ema_decay": ("compression", ["1.5", "abc"]),
    "solver.module.adversarial_warmup": ("compression", ["-1", "abc"]),
    "solver.module.log_audio_items": ("compression", ["-1", "abc"]),
    "solver.module.commitment_weight": ("compression", ["-1", "abc"]),
    "solver.module.opus_baseline": ("compression", ["maybe"]),
    "solver.module.released_layout": ("musicgen_melody", ["maybe"]),
    "solver.module.generation.cfg_coef": ("musicgen", ["-1", "abc"]),
    "solver.module.generation.temperature": ("musicgen", ["0", "abc"]),
    "solver.module.generation.top_k": ("musicgen", ["-1", "2.5"]),
    "solver.module.generation.top_p": ("musicgen", ["1.5", "abc"]),
    "solver.module.generation.use_cache": ("musicgen", ["maybe"]),
    "solver.module.samples.count": ("musicgen", ["-1", "abc"]),
    "solver.module.samples.duration": ("musicgen", ["0", "abc"]),
    "solver.module.samples.seed": ("musicgen", ["-1", "abc"]),
    "solver.module.granularity": ("mt3", ["coarse"]),
    "solver.module.model_type": ("mt3", ["piano", "1"]),
    "solver.module.z_loss": ("mt3", ["-1", "abc"]),
    "solver.module.max_target_length": ("mt3", ["0", "abc"]),
    "solver.module.max_decode_length": ("mt3", ["0", "abc"]),
    "solver.module.decode_batch_size": ("mt3", ["0", "abc"]),
    "solver.module.shift_position_init": ("mt3", ["maybe"]),
    "solver.module.constrained_decoding": ("mt3", ["maybe"]),
    "solver.module.shift_smoothing": ("mt3", ["-1", "abc"]),
    "solver.module.roll_loss_weight": ("mt3", ["-1", "abc"]),
    "solver.module.merge_repeats_ms": ("mt3", ["-1", "abc"]),
    "solver.module.min_onset_probability": ("mt3", ["-0.1", "1", "abc"]),
    "solver.module.timing_loss_weight": ("mt3", ["0", "-1", "abc"]),
    "solver.module.mix_probability": ("mt3", ["-0.1", "1.5", "abc"]),
    "solver.module.model.input_conv_kernel": ("mt3", ["-1", "4", "abc"]),
    "solver.module.model.time_pointer": ("mt3", ["maybe"]),
    "solver.module.model.pitch_from_frame": ("mt3", ["maybe"]),
    "solver.module.model.frame_input": ("mt3", ["maybe"]),
    **{
        f"solver.module.{key}": (solver, ["0", "-1", "2.5", "abc"])
        for solver, keys in (
            ("compression", ["codec.n_filters", "codec.dimension", "codec.n_q"]),
            ("compression", ["discriminator.filters"]),
            ("musicgen", ["lm.n_q", "lm.dim", "lm.num_heads", "lm.num_layers", "lm.ffn_dim"]),
            ("musicgen", ["text.max_length"]),
            ("mt3", ["model.d_model", "model.num_heads", "model.head_dim", "model.d_ff"]),
            ("mt3", ["model.num_encoder_layers", "model.num_decoder_layers"]),
        )
        for key in keys
    },
    "solver.monitor_mode": ("mt3", ["maximum", "1"]),
    "solver.module.melody.stemmer": ("musicgen_melody", ["spleeter", "1"]),
    "solver.module.separator.kind": ("separation", ["demucs", "1"]),
    "solver.module.separator.channels": ("separation", ["[16,32]", "[0,1,2,3,4,5]", "abc"]),
    "solver.module.separator.n_fft": ("separation", ["0", "abc"]),
    "solver.module.separator.hop": ("separation", ["-1", "2.5"]),
    "solver.module.separator.freq_bins": ("separation", ["0", "100", "abc"]),
    "solver.module.separator.patch_frames": ("separation", ["32", "abc"]),
    "solver.module.joint_sdr": ("separation", ["maybe"]),
    "solver.module.overlap": ("separation", ["1", "-0.1", "abc"]),
    "solver.module.melody.n_chroma": ("musicgen_melody", ["0", "abc"]),
    "solver.module.melody.winlen": ("musicgen_melody", ["0", "abc"]),
    "solver.module.melody.hop": ("musicgen_melody", ["-1", "abc"]),
    "solver.module.evaluation.fad_embedder": ("musicgen", ["clap", "1"]),
    "solver.module.codec.bins": ("compression", ["1", "abc"]),
    "solver.module.codec.lstm": ("compression", ["-1", "abc"]),
    "solver.module.codec.causal": ("compression", ["maybe"]),
    "solver.module.codec.ratios": ("compression", ["[]", "[8,0]", "[8,2.5]", "8"]),
    "solver.module.lm.delays": ("musicgen", ["[0,-1,2,3]", "[]", "abc"]),
    "solver.module.codebooks": ("compression", ["[]", "[0]", "abc"]),
    "solver.module.n_q": ("diffusion", ["0", "2.5", "abc"]),
    "solver.module.eval_codebooks": ("diffusion", ["[]", "[0]", "abc"]),
    "solver.module.sampling.steps": ("diffusion", ["0", "2.5", "abc"]),
    "solver.module.sampling.seed": ("diffusion", ["-1", "abc"]),
    "solver.module.diffusion.n_bands": ("diffusion", ["0", "abc"]),
    "solver.module.diffusion.unet.hidden": ("diffusion", ["0", "abc"]),
    "solver.module.diffusion.unet.depth": ("diffusion", ["0", "abc"]),
    "solver.module.diffusion.schedule.num_steps": ("diffusion", ["1", "abc"]),
    **{
        f"solver.module.losses.{key}": ("compression", ["-1", "abc"])
        for key in ("adv", "feat", "msspec", "l1")
    },
    "solver.module.balancer.total_norm": ("compression", ["0", "abc"]),
    "solver.module.balancer.ema_decay": ("compression", ["1.5", "abc"]),
    "cluster.nodes": ("compression", ["0", "abc"]),
    "cluster.tasks_per_node": ("compression", ["0", "1.5"]),
    "cluster.gpus_per_node": ("compression", ["-1", "abc"]),
    "cluster.cpus_per_task": ("compression", ["0", "abc"]),
    "cluster.mem_gb": ("compression", ["0", "abc"]),
    "cluster.timeout_min": ("compression", ["0", "abc"]),
    "cluster.signal_delay_s": ("compression", ["-1", "abc"]),
    "cluster.max_num_timeout": ("compression", ["-1", "abc"]),
    "dataset.auto_prepare.minutes": ("compression", ["0", "abc"]),
    "dataset.auto_prepare.seed": ("compression", ["-1", "abc"]),
    "dataset.auto_prepare.sample_rate": ("compression", ["0", "abc"]),
}
ADDED = {  # keys the trainer presets leave out: given with +
    "trainer.limit_train_batches": ("compression", ["-1", "1.5", "abc"]),
    "trainer.limit_val_batches": ("compression", ["-1", "2.5", "abc"]),
    "trainer.limit_test_batches": ("compression", ["-1", "abc"]),
    "trainer.accumulate_grad_batches": ("compression", ["0", "abc"]),
}
CASES = [
    (solver, f"{key}={value}", key) for key, (solver, values) in SWEEP.items() for value in values
] + [
    (solver, f"+{key}={value}", key) for key, (solver, values) in ADDED.items() for value in values
]


EXPERIMENTS = [
    (path.stem, (re.findall(r"override /solver: (\w+)", path.read_text()) or ["musicgen"])[0])
    for path in sorted((CONF / "experiment").glob("*.yaml"))
]


def composed(config: str, *overrides: str) -> DictConfig:
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


def test_the_sweep_covers_every_rule() -> None:
    assert {rule.path for rule in RULES} - {"split"} == set(SWEEP) | set(ADDED)


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        ("train", ["solver=compression"]),
        ("train", ["solver=compression_encodec24", "trainer=ddp"]),
        ("train", ["solver=mt3", "trainer=debug"]),
        ("train", ["solver=musicgen"]),
        ("train", ["solver=musicgen_melody", "+trainer.limit_train_batches=0.5"]),
        ("train", ["solver=diffusion"]),
        ("train", ["solver=separation", "solver/separator=htdemucs"]),
        ("evaluate", ["solver=separation", "checkpoint=x.ckpt", "dataset=musdb"]),
        ("evaluate", ["solver=diffusion", "checkpoint=x.ckpt"]),
        *[("train", [f"solver={solver}", f"experiment={name}"]) for name, solver in EXPERIMENTS],
        ("evaluate", ["solver=mt3", "checkpoint=x.ckpt", "split=valid"]),
        ("train", ["solver=musicgen", "solver.module.optim.max_norm=null", "seed=0"]),
    ],
)
def test_shipped_configs_are_valid(config: str, overrides: list[str]) -> None:
    validate_config(composed(config, *overrides))


@functools.cache
def base_config(solver: str) -> DictConfig:
    return composed("train", f"solver={solver}")


def overridden(solver: str, override: str) -> DictConfig:
    """``solver``'s train config with ``override`` parsed as Hydra parses the command line (one
    composition per solver keeps the sweep fast)."""
    (parsed,) = OverridesParser.create().parse_overrides([override])
    cfg = copy.deepcopy(base_config(solver))
    OmegaConf.update(cfg, parsed.key_or_group, parsed.value(), force_add=parsed.is_add())
    return cfg


@pytest.mark.parametrize(("solver", "override", "key"), CASES)
def test_bad_value_is_one_sentence_naming_the_key(solver: str, override: str, key: str) -> None:
    with pytest.raises(UserError) as err:
        validate_config(overridden(solver, override))
    message = str(err.value)
    assert message.startswith(f"{key}=") and "set it to" in message and "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["split=training"], "split='training' is invalid: set it to one of train, valid, test"),
        (["loader.batch_size=0"], "loader.batch_size=0 is invalid"),
    ],
)
def test_evaluate_config_is_checked_too(overrides: list[str], expected: str) -> None:
    cfg = composed("evaluate", "solver=compression", "checkpoint=x.ckpt", *overrides)
    with pytest.raises(UserError, match=expected):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["solver=compression", "checkpoint.save_top_k=2", "solver.monitor=null"], "no monitor"),
        (["solver=compression", "trainer.accelerator=gpu"], "no CUDA GPU"),
        (["solver=compression", "solver.data.segment_seconds=1e-6"], "shorter than one sample"),
        (["solver=musicgen", "trainer.max_steps=-1"], "optim.cosine_steps=-1 is invalid"),
        (["solver=musicgen", "solver.module.lm.num_heads=5"], "multiple of"),
        (["solver=musicgen", "solver.module.lm.n_q=3"], "one delay per codebook"),
    ],
)
def test_bad_combinations(overrides: list[str], expected: str) -> None:
    if "trainer.accelerator=gpu" in overrides and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match=expected):
        validate_config(composed("train", *overrides))


@pytest.mark.parametrize(
    ("script", "override"),
    [
        ("train.py", "loader.batch_size=0"),  # hung before
        pytest.param("train.py", "loader.batch_size=abc", marks=pytest.mark.slow),
        pytest.param("train.py", "checkpoint.every_n_train_steps=-1", marks=pytest.mark.slow),
        ("evaluate.py", "loader.num_workers=-1"),
    ],
)
def test_cli_prints_one_error_line_and_exits_2(script: str, override: str, tmp_path: Path) -> None:
    command = [sys.executable, script, "solver=compression", f"paths.root={tmp_path}", override]
    if script == "evaluate.py":
        command.append(f"checkpoint={tmp_path}/never-read.ckpt")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=CLI_LIMIT_S)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {override.split('=')[0]}=")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "datasets").exists(), "the check comes before the dataset is built"
    assert not list(tmp_path.glob("runs/*/checkpoints")), "and before the trainer starts"


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_streams_refuse_a_batch_size_that_would_hang(batch_size: object) -> None:
    """Below the config check too: a batch size of 0 used to hang while the workers' buffers grew."""
    spec = SampleSpec(16000, 1, 1.0)
    for stream in (TrainStream, EvalStream):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            stream(["train-000000.tar"], spec, batch_size)
