"""Checking the values of a composed train/evaluate config before anything heavy runs.

Each :data:`RULES` entry names a key and what it must hold (type and range); a key the config does
not have is not checked (``max_norm`` exists for some solvers only). :func:`validate_config` also
checks a few combinations, and raises one :class:`UserError` naming the key, the value given and
what to set instead (``run_entry`` prints it as one ``error:`` line and exits 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from data.decode import FIELDS
from musicgen.errors import UserError
from musicgen.metrics.embeddings import KINDS as FAD_EMBEDDERS
from musicgen.transcription.segments import HOP_LENGTH, SAMPLE_RATE
from musicgen.transcription.transcriber import MODEL_TYPES
from musicgen.transcription.vocabulary import GRANULARITIES

PRECISIONS = (
    64,
    32,
    16,
    "64",
    "32",
    "16",
    "bf16",
    "64-true",
    "32-true",
    "16-true",
    "bf16-true",
    "16-mixed",
    "bf16-mixed",
    "transformer-engine",
    "transformer-engine-float16",
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """``path`` must satisfy ``ok``; ``expected`` says what that means, in words."""

    path: str
    expected: str
    ok: Callable[[object], bool]


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or float that is not a bool or NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _special(value: object, extra: Sequence[object]) -> bool:
    """``value`` is one of ``extra`` (null or an integer such as -1; ``True`` is not 1 here)."""
    return any(value is e or (is_int(value) and value == e) for e in extra)


def integer(low: int, high: int | None = None, extra: Sequence[object] = ()) -> Callable:
    """An integer in ``[low, high]``, or one of ``extra``."""
    return lambda v: _special(v, extra) or (is_int(v) and v >= low and (high is None or v <= high))


def number(
    low: float,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    nullable: bool = False,
) -> Callable:
    """A finite number between ``low`` and ``high`` (ends included unless open), or null when
    ``nullable``."""

    def ok(v: object) -> bool:
        if v is None:
            return nullable
        if not is_number(v) or abs(v) == float("inf"):
            return False
        above = v > low if open_low else v >= low
        below = high is None or (v < high if open_high else v <= high)
        return above and below

    return ok


def choice(*values: object) -> Callable:
    """One of ``values``, of the same type (``1`` is not ``"1"`` or ``True``)."""
    return lambda v: any(v == c and type(v) is type(c) for c in values)


def is_bool(value: object) -> bool:
    """true or false."""
    return isinstance(value, bool)


def betas(value: object) -> bool:
    """Adam's two betas, each in [0, 1)."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(number(0, 1, open_high=True)(b) for b in value)
    )


def fields(value: object) -> bool:
    """Distinct batch fields, audio among them."""
    return (
        isinstance(value, list)
        and "audio" in value
        and len(set(value)) == len(value)
        and all(f in FIELDS for f in value)
    )


def devices(value: object) -> bool:
    """Lightning's ``devices``: a count >= 1, -1 (all), ``auto``, or device indices."""
    if isinstance(value, list):
        return bool(value) and all(integer(0)(d) for d in value)
    if isinstance(value, str):
        return value == "auto" or all(p.strip().isdigit() for p in value.split(","))
    return integer(1, extra=(-1,))(value)


def int_list(low: int) -> Callable:
    """A non-empty list of integers >= ``low``."""
    return lambda v: isinstance(v, list) and bool(v) and all(integer(low)(x) for x in v)


def multiple_of(step: int) -> Callable:
    """A positive integer multiple of ``step``."""
    return lambda v: integer(step)(v) and v % step == 0


def batch_limit(value: object) -> bool:
    """Lightning's ``limit_*_batches``: a batch count, a fraction in [0, 1], or null."""
    return value is None or integer(0)(value) or (isinstance(value, float) and 0 <= value <= 1)


POSITIVE_INT = "an integer >= 1"
PROBABILITY = "a number in [0, 1]"
OPTIM = "solver.module.optim"
RULES: tuple[Rule, ...] = (
    Rule("seed", "an integer in [0, 2**32 - 1]", integer(0, 2**32 - 1)),
    Rule("split", "one of train, valid, test", choice("train", "valid", "test")),
    Rule("run.resume", "true or false", is_bool),
    Rule("loader.batch_size", POSITIVE_INT, integer(1)),
    Rule("loader.eval_batch_size", POSITIVE_INT, integer(1)),
    Rule("loader.num_workers", "an integer >= 0 (0: load in the main process)", integer(0)),
    Rule("loader.shuffle_buffer", "an integer >= 0 (0 or 1: no shuffling)", integer(0)),
    Rule("loader.train_batches_per_epoch", POSITIVE_INT, integer(1)),
    Rule("loader.global_batches", "true or false", is_bool),
    Rule(
        "checkpoint.every_n_train_steps",
        "an integer >= 1, or null for no step checkpoints",
        integer(1, extra=(None,)),
    ),
    Rule(
        "checkpoint.every_minutes",
        "a number > 0, or null for no timed checkpoints",
        number(0, open_low=True, nullable=True),
    ),
    Rule("checkpoint.save_top_k", "an integer >= 0 (0: only last.ckpt)", integer(0)),
    Rule("trainer.max_steps", "an integer >= 1, or -1 for no step limit", integer(1, extra=(-1,))),
    Rule(
        "trainer.max_epochs",
        "an integer >= 1, -1 or null for no epoch limit",
        integer(1, extra=(-1, None)),
    ),
    *(
        Rule(
            f"trainer.limit_{stage}_batches",
            "an integer >= 0 (batches) or a float in [0, 1]",
            batch_limit,
        )
        for stage in ("train", "val", "test")
    ),
    Rule("trainer.log_every_n_steps", POSITIVE_INT, integer(1)),
    Rule("trainer.check_val_every_n_epoch", "an integer >= 1 or null", integer(1, extra=(None,))),
    Rule("trainer.num_sanity_val_steps", "an integer >= -1", integer(-1)),
    Rule("trainer.gradient_clip_val", "a number >= 0 or null", number(0, nullable=True)),
    Rule("trainer.accumulate_grad_batches", POSITIVE_INT, integer(1)),
    Rule("trainer.precision", f"one of {', '.join(map(str, PRECISIONS[3:]))}", choice(*PRECISIONS)),
    Rule("trainer.accelerator", f"one of {', '.join(ACCELERATORS)}", choice(*ACCELERATORS)),
    Rule("trainer.devices", "an integer >= 1, -1, auto, or a list of device indices", devices),
    Rule("trainer.num_nodes", POSITIVE_INT, integer(1)),
    Rule("solver.data.sample_rate", "an integer sample rate >= 1000 (Hz)", integer(1000)),
    Rule("solver.data.channels", "1 (mono) or 2 (stereo)", integer(1, 2)),
    # before solver.data.segment_seconds: solver=mt3 derives it from the model type
    Rule(
        "solver.module.model_type",
        f"one of {', '.join(sorted(MODEL_TYPES))}",
        choice(*sorted(MODEL_TYPES)),
    ),
    Rule("solver.data.segment_seconds", "a number of seconds > 0", number(0, open_low=True)),
    Rule(
        "solver.data.eval_segment_seconds",
        "a number of seconds > 0, or null",
        number(0, open_low=True, nullable=True),
    ),
    Rule("solver.data.eval_crop", "one of start, center, none", choice("start", "center", "none")),
    Rule("solver.data.fields", f"a list of distinct fields from {list(FIELDS)} with audio", fields),
    Rule(f"{OPTIM}.name", "adafactor or adamw", choice("adafactor", "adamw")),
    Rule(f"{OPTIM}.lr", "a learning rate > 0", number(0, open_low=True)),
    Rule(f"{OPTIM}.betas", "two numbers in [0, 1), e.g. [0.9, 0.95]", betas),
    Rule(f"{OPTIM}.adamw.betas", "two numbers in [0, 1), e.g. [0.9, 0.98]", betas),
    Rule(f"{OPTIM}.weight_decay", "a number >= 0", number(0)),
    Rule(f"{OPTIM}.adamw.weight_decay", "a number >= 0", number(0)),
    Rule(f"{OPTIM}.warmup_steps", "an integer >= 0", integer(0)),
    Rule(
        f"{OPTIM}.cosine_steps",
        "an integer >= 1 (the step where the LR reaches 0), or null",
        integer(1, extra=(None,)),
    ),
    Rule(
        f"{OPTIM}.max_norm",
        "a number > 0, or null for no clipping",
        number(0, open_low=True, nullable=True),
    ),
    Rule("solver.module.model.dropout", PROBABILITY, number(0, 1)),
    Rule("solver.module.lm.dropout", PROBABILITY, number(0, 1)),
    Rule("solver.module.cfg_dropout", PROBABILITY, number(0, 1)),
    Rule("solver.module.melody_dropout", PROBABILITY, number(0, 1)),
    Rule("solver.module.ema_decay", PROBABILITY, number(0, 1)),
    Rule("solver.module.adversarial_warmup", "an integer >= 0", integer(0)),
    Rule("solver.module.log_audio_items", "an integer >= 0", integer(0)),
    Rule("solver.module.commitment_weight", "a number >= 0", number(0)),
    Rule("solver.module.opus_baseline", "true or false", is_bool),
    Rule("solver.module.released_layout", "true or false", is_bool),
    Rule("solver.module.generation.cfg_coef", "a number >= 0", number(0)),
    Rule("solver.module.generation.temperature", "a number > 0", number(0, open_low=True)),
    Rule("solver.module.generation.top_k", "an integer >= 0 (0: off)", integer(0)),
    Rule("solver.module.generation.top_p", PROBABILITY, number(0, 1)),
    Rule("solver.module.generation.use_cache", "true or false", is_bool),
    Rule("solver.module.samples.count", "an integer >= 0", integer(0)),
    Rule("solver.module.samples.duration", "a number of seconds > 0", number(0, open_low=True)),
    Rule("solver.module.samples.seed", "an integer >= 0", integer(0)),
    Rule(
        "solver.module.granularity",
        f"one of {', '.join(GRANULARITIES)}, or null (the model type's)",
        choice(*GRANULARITIES, None),
    ),
    Rule("solver.module.z_loss", "a number >= 0", number(0)),
    Rule("solver.module.max_target_length", POSITIVE_INT, integer(1)),
    Rule("solver.module.max_decode_length", POSITIVE_INT, integer(1)),
    Rule("solver.module.decode_batch_size", POSITIVE_INT, integer(1)),
    Rule("solver.module.shift_position_init", "true or false", is_bool),
    Rule("solver.module.model.time_pointer", "true or false", is_bool),
    Rule("solver.module.model.pitch_from_frame", "true or false", is_bool),
    Rule("solver.module.model.frame_input", "true or false", is_bool),
    Rule("solver.module.constrained_decoding", "true or false", is_bool),
    Rule("solver.module.shift_smoothing", "a number of 10 ms steps >= 0", number(0)),
    Rule("solver.module.roll_loss_weight", "a number >= 0", number(0)),
    Rule("solver.module.merge_repeats_ms", "a number of milliseconds >= 0", number(0)),
    Rule(
        "solver.module.min_onset_probability",
        "a number in [0, 1)",
        number(0, 1, open_high=True),
    ),
    Rule("solver.module.timing_loss_weight", "a number > 0", number(0, open_low=True)),
    Rule("solver.module.mix_probability", PROBABILITY, number(0, 1)),
    Rule(
        "solver.module.model.input_conv_kernel",
        "0 or an odd integer",
        lambda v: integer(0)(v) and (v == 0 or v % 2 == 1),
    ),
    *(
        Rule(f"solver.module.{key}", POSITIVE_INT, integer(1))
        for key in (
            "codec.n_filters",
            "codec.dimension",
            "codec.n_q",
            "discriminator.filters",
            "lm.n_q",
            "lm.dim",
            "lm.num_heads",
            "lm.num_layers",
            "lm.ffn_dim",
            "text.max_length",
            "model.d_model",
            "model.num_heads",
            "model.head_dim",
            "model.d_ff",
            "model.num_encoder_layers",
            "model.num_decoder_layers",
        )
    ),
    Rule("solver.monitor_mode", "min or max", choice("min", "max")),
    Rule(
        "solver.module.melody.stemmer",
        "demucs, separation, oracle or none",
        choice("demucs", "separation", "oracle", "none"),
    ),
    Rule("solver.module.separator.kind", "spleeter or htdemucs", choice("spleeter", "htdemucs")),
    Rule(
        "solver.module.separator.channels",
        "a list of 6 filter counts >= 1 (Spleeter's encoder)",
        lambda v: int_list(1)(v) and len(v) == 6,
    ),
    Rule("solver.module.separator.n_fft", POSITIVE_INT, integer(1)),
    Rule("solver.module.separator.hop", POSITIVE_INT, integer(1)),
    Rule("solver.module.separator.freq_bins", "a positive multiple of 64", multiple_of(64)),
    Rule("solver.module.separator.patch_frames", "a positive multiple of 64", multiple_of(64)),
    Rule("solver.module.joint_sdr", "true or false", is_bool),
    Rule("solver.module.overlap", "a number in [0, 1)", number(0, 1, open_high=True)),
    Rule("solver.module.melody.n_chroma", POSITIVE_INT, integer(1)),
    Rule("solver.module.melody.winlen", POSITIVE_INT, integer(1)),
    Rule("solver.module.melody.hop", POSITIVE_INT, integer(1)),
    Rule(
        "solver.module.evaluation.fad_embedder",
        f"one of {', '.join(FAD_EMBEDDERS)}",
        choice(*FAD_EMBEDDERS),
    ),
    Rule("solver.module.codec.bins", "an integer >= 2 (codebook size)", integer(2)),
    Rule("solver.module.codec.lstm", "an integer >= 0 (LSTM layers)", integer(0)),
    Rule("solver.module.codec.causal", "true or false", is_bool),
    Rule("solver.module.codec.ratios", "a list of integers >= 1", int_list(1)),
    Rule("solver.module.lm.delays", "a list of integers >= 0, one per codebook", int_list(0)),
    Rule("solver.module.codebooks", "a list of codebook counts >= 1", int_list(1)),
    Rule("solver.module.n_q", "a number of codebooks >= 1", integer(1)),
    Rule(
        "solver.module.eval_codebooks",
        "a list of codebook counts >= 1, or null",
        lambda v: v is None or int_list(1)(v),
    ),
    Rule("solver.module.sampling.steps", "a number of diffusion steps >= 1", integer(1)),
    Rule("solver.module.sampling.seed", "an integer >= 0", integer(0)),
    Rule("solver.module.diffusion.n_bands", POSITIVE_INT, integer(1)),
    Rule("solver.module.diffusion.unet.hidden", POSITIVE_INT, integer(1)),
    Rule("solver.module.diffusion.unet.depth", POSITIVE_INT, integer(1)),
    Rule("solver.module.diffusion.schedule.num_steps", "an integer >= 2", integer(2)),
    *(
        Rule(f"solver.module.losses.{key}", "a loss weight >= 0", number(0))
        for key in ("adv", "feat", "msspec", "l1")
    ),
    Rule("solver.module.balancer.total_norm", "a number > 0", number(0, open_low=True)),
    Rule("solver.module.balancer.ema_decay", PROBABILITY, number(0, 1)),
    Rule("cluster.nodes", POSITIVE_INT, integer(1)),
    Rule("cluster.tasks_per_node", POSITIVE_INT, integer(1)),
    Rule("cluster.gpus_per_node", "an integer >= 0 or null", integer(0, extra=(None,))),
    Rule("cluster.cpus_per_task", "an integer >= 1 or null", integer(1, extra=(None,))),
    Rule("cluster.mem_gb", "a number > 0 or null", number(0, open_low=True, nullable=True)),
    Rule("cluster.timeout_min", "a number of minutes >= 1", integer(1)),
    Rule("cluster.signal_delay_s", "a number of seconds >= 0", integer(0)),
    Rule("cluster.max_num_timeout", "an integer >= 0", integer(0)),
    Rule("dataset.auto_prepare.minutes", "a number of minutes > 0", number(0, open_low=True)),
    Rule("dataset.auto_prepare.seed", "an integer >= 0", integer(0)),
    Rule("dataset.auto_prepare.sample_rate", "an integer sample rate >= 1000", integer(1000)),
)


def _value(cfg: DictConfig, path: str) -> object:
    """The resolved value at ``path`` as plain Python, or :data:`_ABSENT`."""
    try:
        value = OmegaConf.select(cfg, path, default=_ABSENT, throw_on_missing=False)
    except Exception as err:  # an interpolation that does not resolve
        raise UserError(f"{path} cannot be resolved ({err}): fix the override") from err
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _shown(value: object) -> str:
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)


def _combinations(cfg: DictConfig) -> str | None:
    """The first problem among values that are valid alone but not together, or None."""
    top_k, monitor = _value(cfg, "checkpoint.save_top_k"), _value(cfg, "solver.monitor")
    if is_int(top_k) and top_k > 0 and monitor in (None, _ABSENT):
        return (
            f"checkpoint.save_top_k={top_k} needs a metric to rank checkpoints by, but solver "
            f"{_value(cfg, 'solver.name')} has no monitor: keep checkpoint.save_top_k=0"
        )
    accelerator = _value(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return (
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU: use trainer=cpu"
        )
    dim, heads = _value(cfg, "solver.module.lm.dim"), _value(cfg, "solver.module.lm.num_heads")
    if is_int(dim) and is_int(heads) and dim % heads:
        return (
            f"solver.module.lm.dim={dim} must be a multiple of solver.module.lm.num_heads={heads}"
        )
    delays, n_q = _value(cfg, "solver.module.lm.delays"), _value(cfg, "solver.module.lm.n_q")
    if isinstance(delays, list) and is_int(n_q) and len(delays) != n_q:
        return (
            f"solver.module.lm.delays={delays} needs one delay per codebook "
            f"(solver.module.lm.n_q={n_q})"
        )
    segment, rate = (
        _value(cfg, "solver.data.segment_seconds"),
        _value(cfg, "solver.data.sample_rate"),
    )
    model_type = _value(cfg, "solver.module.model_type")
    if model_type in MODEL_TYPES and is_number(segment):
        frames = MODEL_TYPES[model_type].segment_frames
        seconds = frames * HOP_LENGTH / SAMPLE_RATE
        if abs(segment - seconds) > 1e-9:
            return (
                f"solver.data.segment_seconds={segment} does not fit solver.module.model_type="
                f"{model_type}, whose inputs are {frames} frames: set it to {seconds} or leave it out"
            )
    if is_number(segment) and is_int(rate) and round(segment * rate) < 1:
        return (
            f"solver.data.segment_seconds={segment} is shorter than one sample at "
            f"{rate} Hz: give a longer segment"
        )
    return None


def validate_config(cfg: DictConfig) -> None:
    """Raise one :class:`UserError` for the first bad value or combination in ``cfg``."""
    for rule in RULES:
        value = _value(cfg, rule.path)
        if value is not _ABSENT and not rule.ok(value):
            raise UserError(f"{rule.path}={_shown(value)} is invalid: set it to {rule.expected}")
    problem = _combinations(cfg)
    if problem:
        raise UserError(problem)
