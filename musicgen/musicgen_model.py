"""Text (and melody) to music: ``MusicGen.from_checkpoint(path).generate(["a calm chorale"])``.

A :class:`MusicGen` is a frozen codec (:class:`~musicgen.compression.CompressionModel`), a
:class:`~musicgen.lm.MusicLM` over the codec's first ``n_q`` codebooks, and the condition
provider that turns captions (and, for melody models, the chromagram of a stemmed melody) into
the prefix prepended to the decoder input. ``solvers.musicgen.MusicGenSolver`` trains one as
its ``model``; its checkpoints hold everything needed to rebuild it here, without Lightning.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from musicgen.audio import convert_audio, loop_to_length
from musicgen.checkpoint_io import check_solver, first_line, load_lightning_checkpoint
from musicgen.compression import CodecConfig, CompressionModel
from musicgen.conditioners.chroma import ChromaExtractor
from musicgen.conditioners.melody import MelodyConditioner
from musicgen.conditioners.provider import ConditionProvider
from musicgen.conditioners.stemmers import STEMS, build_stemmer
from musicgen.conditioners.text import TextConditioner
from musicgen.diffusion import MultiBandDiffusion
from musicgen.diffusion.decoder import check_fits, decode_tokens, resolve_diffusion
from musicgen.errors import UserError
from musicgen.lm import LMConfig, MusicLM
from musicgen.paths import default_folders, resolve_references

SOLVER_PREFIX = "model."  # parameter prefix of the model inside solvers.musicgen.MusicGenSolver
EMA_PREFIX = "ema."  # the solver's EMA shadows: "ema.<name with / for .>"
GENERATION = {"cfg_coef": 3.0, "temperature": 1.0, "top_k": 250, "top_p": 0.0, "use_cache": True}


def build_conditions(
    dim: int,
    sample_rate: int,
    text: dict | None,
    melody: dict | None,
    codec_hop: int | None = None,
    released_layout: bool = False,
) -> ConditionProvider:
    """The condition provider: ``text`` holds :class:`TextConditioner` arguments (None: no text),
    ``melody`` the :class:`MelodyConditioner` ones plus ``stemmer`` (its kind: demucs, oracle or
    none), ``stemmers`` (options per kind, e.g. ``{demucs: {name, repo}}``) and ``step_aligned``
    (one melody frame per LM step: ``frame_hop`` = ``codec_hop``); None: no melody.
    ``released_layout``: the prefix as the released models read it (see
    :class:`ConditionProvider`), which is what export to AudioCraft/transformers needs."""
    text_conditioner = TextConditioner(output_dim=dim, **text) if text is not None else None
    melody_conditioner = None
    if melody is not None:
        options = dict(melody)
        kind = options.pop("stemmer", "none")
        stemmer = build_stemmer(kind, **dict(options.pop("stemmers", None) or {}).get(kind, {}))
        if options.pop("step_aligned", False):
            if codec_hop is None:
                raise ValueError("a step-aligned melody needs the codec's hop (codec_hop)")
            options["frame_hop"] = codec_hop
        melody_conditioner = MelodyConditioner(
            output_dim=dim, sample_rate=sample_rate, stemmer=stemmer, **options
        )
    return ConditionProvider(text_conditioner, melody_conditioner, released_layout)


def fit_melody(wav: torch.Tensor, length: int) -> torch.Tensor:
    """Crop ``wav (..., T)`` to ``length`` samples, or repeat it until it is that long."""
    if wav.shape[-1] == 0:
        raise UserError("the melody is empty: pass an audio file with some content")
    return loop_to_length(wav, length)


class MusicGen(nn.Module):
    """Frozen codec + language model + condition provider (see the module docstring).

    ``text`` and ``melody`` are the settings the conditions were built from (kept so a
    checkpoint can rebuild them); the codec stays frozen and in eval mode.
    """

    def __init__(
        self,
        codec: CompressionModel,
        lm: MusicLM,
        conditions: ConditionProvider,
        text: dict | None = None,
        melody: dict | None = None,
        segment_seconds: float | None = None,
    ) -> None:
        super().__init__()
        if lm.config.n_q > codec.num_codebooks or lm.config.card != codec.cardinality:
            raise UserError(
                f"the LM models {lm.config.n_q} codebooks of {lm.config.card} but the codec has "
                f"{codec.num_codebooks} of {codec.cardinality}: set lm.n_q <= {codec.num_codebooks} "
                f"and lm.card = {codec.cardinality}"
            )
        self.codec = codec.eval().requires_grad_(False)
        self.lm = lm
        self.conditions = conditions
        self.settings = {"text": text, "melody": melody}
        self.segment_seconds = segment_seconds  # the training segment: longer output is windowed
        self.extend_stride: float | None = None  # default window advance (None: half a segment)

    @classmethod
    def build(
        cls,
        codec: CompressionModel,
        lm: dict,
        text: dict | None,
        melody: dict | None,
        segment_seconds: float | None = None,
        released_layout: bool = False,
    ) -> MusicGen:
        """A new model on ``codec``; ``lm`` holds :class:`LMConfig` fields (``card`` defaults to
        the codec's codebook size); ``segment_seconds`` is the training segment length;
        ``released_layout`` lays the prefix out as the released models (see
        :func:`build_conditions`)."""
        config = LMConfig.from_dict({"card": codec.cardinality, **lm})
        conditions = build_conditions(
            config.dim, codec.sample_rate, text, melody, codec.config.hop_length, released_layout
        )
        return cls(codec, MusicLM(config), conditions, text, melody, segment_seconds)

    def train(self, mode: bool = True) -> MusicGen:
        super().train(mode)
        self.codec.eval()
        return self

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def channels(self) -> int:
        return self.codec.channels

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    @property
    def has_melody(self) -> bool:
        return self.conditions.melody is not None

    @torch.no_grad()
    def tokens(self, wav: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, n_q, frames)`` of ``wav (B, C, T)`` from the frozen codec (in float32,
        also under mixed precision)."""
        with torch.autocast(wav.device.type, enabled=False):
            return self.codec.encode(wav.float(), self.lm.config.n_q)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, length: int) -> torch.Tensor:
        """Float32 audio ``(B, C, length)`` of ``codes (B, n_q, frames)``."""
        with torch.autocast(codes.device.type, enabled=False):
            return self.codec.decode(codes, length).float()

    def chroma(self, wav: torch.Tensor) -> torch.Tensor:
        """Chromagram ``(B, F, n_chroma)`` of ``wav (B, C, T)`` as the melody condition sees it
        (without stemming); defaults to 12 bins, window 2^14, hop 2^12 for text-only models."""
        melody = self.conditions.melody
        extractor = melody.chroma if melody is not None else ChromaExtractor(self.sample_rate)
        return extractor.to(wav.device)(wav)

    def melody_chroma(self, wav: torch.Tensor, stems: torch.Tensor | None = None) -> torch.Tensor:
        """The melody condition's chromagram ``(B, F, n_chroma)`` of the stemmed ``wav``, at the
        chroma hop (as :meth:`chroma` gives it) over the span the condition covers."""
        melody = self.conditions.melody
        if melody is None:
            raise UserError("this model has no melody conditioning: use a musicgen_melody model")
        return melody.covered_chroma(wav, stems)

    def melody_as_stems(self, wav: torch.Tensor) -> torch.Tensor | None:
        """``wav (B, C, T)`` as the stems an ``oracle`` model keeps (``None`` for other stemmers):
        a melody given at inference is already the separated melody."""
        if (self.settings["melody"] or {}).get("stemmer") != "oracle":
            return None
        stems = wav.new_zeros(wav.shape[0], len(STEMS), *wav.shape[1:])
        stems[:, STEMS.index("other")] = wav
        return stems

    def prepare_melody(
        self, melody: torch.Tensor, melody_sr: int | None, length: int, batch: int
    ) -> torch.Tensor:
        """``melody (C, T)`` or ``(B, C, T)`` at ``melody_sr`` -> ``(batch, channels, length)``."""
        if not self.has_melody:
            raise UserError(
                "this model has no melody conditioning: leave out the melody or use a "
                "musicgen_melody checkpoint"
            )
        if melody.dim() == 2:
            melody = melody[None]
        if melody.dim() != 3 or melody.shape[0] not in (1, batch):
            raise UserError(
                f"melody must be (channels, time) or ({batch}, channels, time), got {tuple(melody.shape)}"
            )
        rate = melody_sr or self.sample_rate
        items = [convert_audio(m, rate, self.sample_rate, self.channels) for m in melody.float()]
        wav = fit_melody(torch.stack(items), length)
        return wav.expand(batch, -1, -1) if wav.shape[0] != batch else wav

    def condition(
        self,
        texts: list[str | None],
        length: int,
        melody: torch.Tensor | None = None,
        stems: torch.Tensor | None = None,
        drop: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix ``(B, P, dim)`` and mask of ``texts`` (and ``melody``, ``length`` samples);
        ``drop`` gives the null condition of the same shape (every condition dropped), for
        classifier-free guidance. A melody model without melody gets the dropped melody."""
        size = len(texts)
        all_rows = torch.ones(size, dtype=torch.bool, device=self._device)
        no_rows = torch.zeros_like(all_rows)
        melody_inputs = {}
        if self.has_melody:
            melody_inputs["drop_melody"] = all_rows if drop or melody is None else no_rows
            if melody is None:
                conditioner = self.conditions.melody
                frames = conditioner.chroma.num_frames(length)  # at the chroma hop, as a cache's
                melody_inputs["chroma"] = torch.zeros(size, frames, conditioner.n_chroma)
            else:
                melody_inputs |= {"wav": melody, "stems": stems}
        return self.conditions(
            list(texts), drop_text=all_rows if drop else no_rows, **melody_inputs
        )

    @property
    def _device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @torch.no_grad()
    def generate(
        self,
        texts: list[str | None],
        melody: torch.Tensor | None = None,
        melody_sr: int | None = None,
        duration: float = 8.0,
        melody_stems: torch.Tensor | None = None,
        cfg_coef: float = 3.0,
        temperature: float = 1.0,
        top_k: int = 250,
        top_p: float = 0.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        progress: bool = False,
        extend_stride: float | None = None,
        decoder: str = "codec",
        diffusion: MultiBandDiffusion | str | Path | None = None,
        diffusion_steps: int = 20,
    ) -> torch.Tensor:
        """Audio ``(B, channels, duration * sample_rate)`` for the captions ``texts``.

        Beyond the training segment (``segment_seconds``) the audio is generated in windows of
        one segment that advance by ``extend_stride`` seconds (default: half a segment), each
        prompted with the overlap and conditioned on its own part of the melody.

        ``melody`` (melody models only) is cropped or repeated to ``duration``; ``melody_stems``
        ``(B, S, C, T)`` at the model's rate are what the ``oracle`` stemmer keeps from.
        ``cfg_coef`` 1 (or 0) turns classifier-free guidance off; ``temperature`` 0 is greedy.
        ``decoder="diffusion"`` decodes the tokens with ``diffusion`` (a MultiBand Diffusion
        decoder or its checkpoint path) in ``diffusion_steps`` steps instead of the codec.
        """
        if decoder not in ("codec", "diffusion"):
            raise UserError(f"decoder must be codec or diffusion, got {decoder!r}")
        if decoder == "diffusion":
            if diffusion is None:
                raise UserError(
                    "decoder='diffusion' needs diffusion= (a decoder or its checkpoint)"
                )
            diffusion = resolve_diffusion(diffusion, self.codec, self.lm.config.n_q)
            diffusion = diffusion.to(self._device)
            check_fits(diffusion, self.codec, self.lm.config.n_q)
        if duration <= 0:
            raise UserError(f"duration must be positive, got {duration}")
        if not texts:
            raise UserError("give at least one text (an empty string for no caption)")
        length = round(duration * self.sample_rate)
        device = self._device
        wav = stems = None
        if melody is not None:
            wav = self.prepare_melody(melody, melody_sr, length, len(texts)).to(device)
            if melody_stems is not None:
                stems = fit_melody(melody_stems.float(), length).to(device)
        hop = self.codec.config.hop_length
        total = math.ceil(length / hop)
        window, stride = self._windows(total, extend_stride)
        sampling = {
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "use_cache": use_cache,
            "generator": generator,
            "progress": progress,
        }
        codes, start = None, 0
        while True:  # one window of at most a training segment; each continues the previous one
            frames = min(window, total - start)
            span = slice(start * hop, min((start + frames) * hop, length))
            new = self._generate_window(
                texts,
                span.stop - span.start,
                None if wav is None else wav[..., span],
                None if stems is None else stems[..., span],
                frames,
                None if codes is None else codes[..., start:],
                cfg_coef,
                sampling,
            )
            codes = new if codes is None else torch.cat([codes[..., :start], new], dim=-1)
            if start + frames >= total:
                break
            start += stride
        if decoder == "diffusion":
            return decode_tokens(
                diffusion, self.codec, codes, length, diffusion_steps, generator, progress
            )
        return self.decode(codes, length)

    def _windows(self, total: int, extend_stride: float | None) -> tuple[int, int]:
        """Window and stride, in frames, for ``total`` frames: one window when they fit in a
        training segment, else windows of a segment advancing by ``extend_stride`` seconds
        (default ``self.extend_stride``, else half a segment), each prompted with the overlap, as
        AudioCraft extends."""
        if self.segment_seconds is None:
            return total, total
        window = max(1, int(self.segment_seconds * self.frame_rate))
        if total <= window:
            return total, total
        seconds = extend_stride if extend_stride is not None else self.extend_stride
        seconds = self.segment_seconds / 2 if seconds is None else seconds
        stride = int(seconds * self.frame_rate)
        if not 0 < stride < window:
            raise UserError(
                f"extend_stride must be in (0, {self.segment_seconds}) seconds (the training "
                f"segment), got {extend_stride}"
            )
        return window, stride

    def _generate_window(
        self,
        texts: list[str | None],
        length: int,
        wav: torch.Tensor | None,
        stems: torch.Tensor | None,
        frames: int,
        prompt: torch.Tensor | None,
        cfg_coef: float,
        sampling: dict,
    ) -> torch.Tensor:
        """Codes ``(B, K, frames)`` conditioned on ``texts`` and this window's melody."""
        prefix, mask = self.condition(texts, length, wav, stems)
        null_prefix = null_mask = None
        if cfg_coef not in (0.0, 1.0):
            null_prefix, null_mask = self.condition(texts, length, wav, stems, drop=True)
        return self.lm.generate(
            prefix,
            mask,
            null_prefix,
            null_mask,
            num_frames=frames,
            prompt=prompt,
            cfg_coef=cfg_coef if null_prefix is not None else 1.0,
            **sampling,
        )

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: str = "cpu",
        text_dir: str | Path | None = None,
        stemmer: str | None = None,
        demucs_repo: str | Path | None = None,
        codec_dir: str | Path | None = None,
    ) -> MusicGen:
        """A released MusicGen folder, AudioCraft's layout (``state_dict.bin`` +
        ``compression_state_dict.bin``) or transformers' (``config.json`` + ``model.safetensors``),
        text-only or melody, mono or stereo; see :mod:`musicgen.pretrained`."""
        from musicgen.pretrained import load_pretrained

        return load_pretrained(folder, device, text_dir, stemmer, demucs_repo, codec_dir)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "cpu",
        ema: bool = True,
        weights_dir: str | Path | None = None,
        text_dir: str | Path | None = None,
        stemmer: str | None = None,
        demucs_repo: str | Path | None = None,
    ) -> MusicGen:
        """Rebuild the model of a ``train.py`` checkpoint of ``solver=musicgen``/``musicgen_melody``
        (read with ``weights_only=True``), with its EMA weights when it has them and ``ema``.

        The pretrained parts it names resolve on this machine: ``${paths.weights_dir}`` references
        in the checkpoint point into ``weights_dir`` (default ``MUSICGEN_WEIGHTS`` or ``./weights``);
        ``text_dir`` (a text encoder folder), ``stemmer`` (demucs, oracle, none) and
        ``demucs_repo`` (a local Demucs folder) replace what the checkpoint says."""
        fix = "pass <run dir>/checkpoints/last.ckpt of train.py solver=musicgen"
        state = load_lightning_checkpoint(path, fix=fix)
        check_solver(state, path, ("musicgen", "musicgen_melody"))
        try:
            hparams, weights = state["hyper_parameters"], state["state_dict"]
            codec = CompressionModel(CodecConfig.from_dict(hparams["codec"]))
            text, melody = local_conditions(
                resolve_references(hparams.get("text"), default_folders(weights_dir=weights_dir)),
                resolve_references(hparams.get("melody"), default_folders(weights_dir=weights_dir)),
                text_dir,
                stemmer,
                demucs_repo,
            )
            if hparams.get("init_from"):  # fine-tuned from a released folder: rebuilt from it
                folders = default_folders(weights_dir=weights_dir)
                demucs = ((melody or {}).get("stemmers") or {}).get("demucs") or {}
                model = cls.from_pretrained(
                    resolve_references(hparams["init_from"], folders),
                    text_dir=(text or {}).get("local_dir"),
                    stemmer=(melody or {}).get("stemmer"),
                    demucs_repo=demucs.get("repo"),
                )
            else:
                model = cls.build(
                    codec,
                    hparams["lm"],
                    text,
                    melody,
                    hparams.get("segment_seconds"),
                    bool(hparams.get("released_layout", False)),
                )
        except (KeyError, TypeError) as err:
            raise UserError(
                f"{path} is not a checkpoint of train.py solver=musicgen (missing {err}): {fix}"
            ) from err
        own = {
            k[len(SOLVER_PREFIX) :]: v for k, v in weights.items() if k.startswith(SOLVER_PREFIX)
        }
        if ema:
            own |= {
                k[len(EMA_PREFIX) :].replace("/", "."): v
                for k, v in weights.items()
                if k.startswith(EMA_PREFIX)
            }
        try:
            model.load_state_dict(own)
        except RuntimeError as err:
            raise UserError(
                f"the weights in {path} do not fit the model its hyperparameters describe "
                f"({first_line(err)}): {fix}"
            ) from None
        return model.to(device).eval()


def local_conditions(
    text: dict | None,
    melody: dict | None,
    text_dir: str | Path | None,
    stemmer: str | None,
    demucs_repo: str | Path | None,
) -> tuple[dict | None, dict | None]:
    """A checkpoint's text and melody settings with this machine's folders given on top."""
    if text is not None and text_dir is not None:
        text = {**text, "local_dir": str(text_dir)}
    if melody is not None and (stemmer or demucs_repo):
        stemmers = dict(melody.get("stemmers") or {})
        if demucs_repo is not None:
            stemmers["demucs"] = {**stemmers.get("demucs", {}), "repo": str(demucs_repo)}
        melody = {**melody, "stemmers": stemmers, "stemmer": stemmer or melody.get("stemmer")}
    return text, melody
