"""Released MusicGen folders -> :class:`~musicgen.musicgen_model.MusicGen` (``MusicGen.from_pretrained``).

Two layouts are recognised by their files:

* **transformers** (``config.json`` + ``model.safetensors``/``pytorch_model.bin``, with the
  tokenizer files of a download): ``MusicgenForConditionalGeneration`` (text-only, mono or
  stereo) or ``MusicgenMelodyForConditionalGeneration``: decoder, T5, projections and the
  ``audio_encoder`` codec (see :mod:`musicgen.lm.convert`, :mod:`musicgen.compression.released`).
* **AudioCraft** (``state_dict.bin`` + ``compression_state_dict.bin``): the LM and the codec as
  AudioCraft builds them from their saved configs (:mod:`musicgen.lm.audiocraft`); the T5 named
  by the config is read from ``text_dir``, a ``<name>`` folder beside the files, or the local
  Hugging Face cache.

The conditions are laid out as each implementation feeds its decoder: AudioCraft attends every
condition position (padding and dropped text are zero vectors; ``released_layout``), transformers'
text-only models mask the text padding. Melody models stem the melody with Demucs only when a
stemmer is asked for (AudioCraft always keeps Demucs' vocals + other; transformers does not stem).
"""

from __future__ import annotations

from pathlib import Path

from musicgen.compression import CompressionModel
from musicgen.compression.released import (
    CODEC_FILE,
    StereoCodec,
    codec_from_hf,
    load_audiocraft_codec,
)
from musicgen.conditioners.chroma import ChromaExtractor
from musicgen.conditioners.melody import MelodyConditioner
from musicgen.conditioners.provider import ConditionProvider
from musicgen.conditioners.stemmers import Stemmer, build_stemmer
from musicgen.conditioners.text import TextConditioner
from musicgen.errors import UserError
from musicgen.lm.audiocraft import LM_FILE, load_audiocraft_lm
from musicgen.lm.convert import DECODER_TYPES, load_hf_musicgen
from musicgen.musicgen_model import MusicGen

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
RELEASE_SEGMENT = 30.0  # seconds: transformers' released generation length (1500 steps at 50 Hz)
RELEASE_STRIDE = 18.0  # seconds: AudioCraft's extend_stride for outputs beyond a segment


def detect_layout(folder: Path) -> str:
    """``"transformers"`` or ``"audiocraft"``; a :class:`UserError` naming what is missing. A
    folder with both (a whole ``facebook/musicgen-*`` download) reads as transformers: its T5 is
    inside."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: pass a MusicGen model folder")
    has_weights = any((folder / name).is_file() for name in HF_WEIGHTS)
    if (folder / "config.json").is_file() and has_weights:
        return "transformers"
    if (folder / LM_FILE).is_file():
        return "audiocraft"
    if (folder / "config.json").is_file():
        raise UserError(f"{folder} has a config.json but no weights ({' / '.join(HF_WEIGHTS)})")
    raise UserError(
        f"{folder} is not a MusicGen folder: it needs {LM_FILE} + {CODEC_FILE} (AudioCraft) or "
        "config.json + model.safetensors (transformers)"
    )


def _stemmer(stemmer: str | None, demucs_repo: str | Path | None) -> tuple[Stemmer, str]:
    kind = stemmer or ("demucs" if demucs_repo is not None else "none")
    options = {"repo": str(demucs_repo)} if kind == "demucs" and demucs_repo is not None else {}
    return build_stemmer(kind, **options), kind


def load_pretrained(
    folder: str | Path,
    device: str = "cpu",
    text_dir: str | Path | None = None,
    stemmer: str | None = None,
    demucs_repo: str | Path | None = None,
    codec_dir: str | Path | None = None,
) -> MusicGen:
    """A released MusicGen folder of either layout as a :class:`MusicGen` in eval mode.

    ``text_dir``: the T5 folder of an AudioCraft release; ``stemmer``/``demucs_repo``: how melody
    models separate the melody (default: no stemming; ``demucs`` when ``demucs_repo`` is given);
    ``codec_dir``: a transformers ``EncodecModel`` folder, for an AudioCraft release whose
    codec file only names a pretrained codec."""
    path = Path(folder)
    if detect_layout(path) == "transformers":
        model = _from_transformers(path, stemmer, demucs_repo)
    else:
        model = _from_audiocraft(path, text_dir, stemmer, demucs_repo, codec_dir)
    model.extend_stride = RELEASE_STRIDE
    return model.to(device).eval()


def _from_transformers(path: Path, stemmer: str | None, demucs_repo: str | Path | None) -> MusicGen:
    release = load_hf_musicgen(path)
    if release.hf_model.config.model_type in DECODER_TYPES:
        raise UserError(
            f"{path} holds only a MusicGen decoder: pass the whole model's folder (with its "
            "text encoder and audio encoder)"
        )
    if release.conditions is None:
        raise UserError(
            f"{path} has no tokenizer files (tokenizer_config.json): copy them from the model's "
            "download (save_pretrained does not write them)"
        )
    codec = codec_from_hf(release.hf_model.audio_encoder)
    channels = int(release.hf_model.config.decoder.audio_channels)
    melody_settings = None
    if release.conditions.melody is not None:
        release.conditions.melody.stemmer, kind = _stemmer(stemmer, demucs_repo)
        melody_settings = {"stemmer": kind}
    return MusicGen(
        StereoCodec(codec) if channels == 2 else codec,
        release.lm,
        release.conditions,
        melody=melody_settings,
        segment_seconds=RELEASE_SEGMENT,
    )


def _t5_folder(path: Path, name: str, text_dir: str | Path | None) -> str | None:
    if text_dir is not None:
        return str(text_dir)
    beside = path / name
    return str(beside) if beside.is_dir() else None


def _from_audiocraft(
    path: Path,
    text_dir: str | Path | None,
    stemmer: str | None,
    demucs_repo: str | Path | None,
    codec_dir: str | Path | None,
) -> MusicGen:
    release = load_audiocraft_lm(path)
    missing = {"text", "melody"} - set(release.projections)
    missing -= {kind for kind in ("text", "melody") if getattr(release, kind) is None}
    if missing:
        raise UserError(f"{path / LM_FILE} has no output projection for its {sorted(missing)}")
    codec = load_audiocraft_codec(path) if codec_dir is None else _hf_codec(Path(codec_dir))
    cfg = release.cfg
    rate = int(cfg.get("sample_rate", codec.sample_rate))
    if codec.sample_rate != rate:
        raise UserError(
            f"the codec of {path} runs at {codec.sample_rate} Hz but the LM was trained on "
            f"{rate} Hz codes: use the codec released with this model"
        )
    if (cfg.get("interleave_stereo_codebooks") or {}).get("use"):
        if (cfg["interleave_stereo_codebooks"]).get("per_timestep"):
            raise UserError("stereo codes interleaved per time step are not supported")
        codec = StereoCodec(codec)
    dim = release.lm.config.dim
    text = melody = None
    melody_settings = None
    if release.text is not None:
        name = release.text["name"]
        text = TextConditioner(
            dim, name=name, max_length=512, local_dir=_t5_folder(path, name, text_dir)
        )
        if text.encoder_dim != release.text["encoder_dim"]:
            raise UserError(
                f"the text encoder found for {name!r} is {text.encoder_dim} wide, the release "
                f"expects {release.text['encoder_dim']}: pass the {name} folder (--text-encoder)"
            )
        text.proj.load_state_dict(release.projections["text"])
    if release.melody is not None:
        settings = dict(release.melody)
        if settings.pop("sample_rate") != codec.sample_rate:
            raise UserError(f"the chroma of {path} is set for another sample rate than its codec")
        match_length = settings.pop("match_len_on_eval")
        chroma_stemmer, kind = _stemmer(stemmer, demucs_repo)
        frames = ChromaExtractor(
            codec.sample_rate,
            n_chroma=settings["n_chroma"],
            winlen=settings["winlen"],
            hop=settings["hop"],
        )
        melody = MelodyConditioner(
            dim,
            sample_rate=codec.sample_rate,
            stemmer=chroma_stemmer,
            duration_frames=(
                frames.num_frames(int(codec.sample_rate * release.segment_seconds))
                if match_length
                else None
            ),
            **settings,
        )
        melody.proj.load_state_dict(release.projections["melody"])
        melody_settings = {"stemmer": kind}
    conditions = ConditionProvider(text, melody, released_layout=True)
    return MusicGen(
        codec,
        release.lm,
        conditions,
        melody=melody_settings,
        segment_seconds=release.segment_seconds,
    )


def _hf_codec(folder: Path) -> CompressionModel:
    """Our codec from a transformers ``EncodecModel`` folder (e.g. facebook/encodec_32khz)."""
    from transformers import EncodecModel

    try:
        return codec_from_hf(EncodecModel.from_pretrained(folder, local_files_only=True))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load an EnCodec model from {folder}: {err}") from None
