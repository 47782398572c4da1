"""CLAP score: cosine similarity of the CLAP embeddings of a caption and of the audio made from it.

As AudioCraft's ``CLAPTextConsistencyMetric``: audio is converted to 48 kHz mono, embedded by a
LAION CLAP audio tower and compared with the text tower's embedding of its caption; the score is
the mean cosine similarity over all pairs. The model runs only when ``laion_clap`` is installed
(``pip install -e .[eval]``) and a local checkpoint is given (MusicGen uses
``music_audioset_epoch_15_esc_90.14.pt``, HTSAT-base); otherwise :meth:`ClapScore.compute` returns
``value=None`` and the reason, for the table.

:class:`LaionClap` builds the model from laion_clap's own classes, offline: ``laion_clap``'s
``CLAP_Module`` cannot be used as it is, because importing it loads three tokenizers from the
Hugging Face hub and constructing it downloads the roberta-base weights (which the CLAP checkpoint
replaces). The text tower's architecture and tokenizer come from a local roberta-base folder or
the local Hugging Face cache (``text_model``: ``config.json``, ``vocab.json``, ``merges.txt``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from musicgen.audio import convert_audio
from musicgen.errors import UserError

CLAP_RATE = 48000
CLAP_FILE = "music_audioset_epoch_15_esc_90.14.pt"
CLAP_URL = "https://huggingface.co/lukewys/laion_clap/resolve/main/"
CLAP_TEXT = "roberta-base"
CLAP_SAMPLES = 480000  # laion_clap's input length: 10 s at 48 kHz
CONTEXT_LENGTH = 77


class ClapModel(Protocol):
    """A joint audio-text embedding model."""

    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` mono 48 kHz audio -> ``(B, D)``."""
        ...

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """``B`` captions -> ``(B, D)``."""
        ...


@dataclass(frozen=True)
class ClapResult:
    """Mean cosine similarity over ``n`` pairs; ``None`` when not computed (``note`` says why)."""

    value: float | None
    n: int
    note: str = ""


class ClapScore:
    """Accumulates caption/audio CLAP cosine similarities; ``model=None`` makes an empty slot."""

    def __init__(self, model: ClapModel | None, note: str = "") -> None:
        self.model = model
        self.note = note
        self.cosine_sum = 0.0
        self.n = 0

    @property
    def available(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def update(self, audio: torch.Tensor, sample_rate: int, texts: list[str]) -> None:
        """Add ``(B, C, T)`` audio and its ``B`` captions."""
        if self.model is None:
            return
        if audio.shape[0] != len(texts):
            raise ValueError(f"{audio.shape[0]} audio items but {len(texts)} captions")
        mono = torch.stack([convert_audio(a.float(), sample_rate, CLAP_RATE, 1)[0] for a in audio])
        audio_emb = self.model.embed_audio(mono).double()
        text_emb = self.model.embed_text(list(texts)).double().to(audio_emb.device)
        self.cosine_sum += float(F.cosine_similarity(audio_emb, text_emb, dim=1, eps=1e-8).sum())
        self.n += len(texts)

    def compute(self) -> ClapResult:
        if self.model is None:
            return ClapResult(None, 0, self.note)
        if self.n == 0:
            raise ValueError("CLAP score of zero pairs: update with some audio first")
        return ClapResult(self.cosine_sum / self.n, self.n, self.note)


def clap_module() -> ModuleType:
    """laion_clap's model package ``clap_module``, imported as laion_clap imports it (its folder on
    ``sys.path``) but without ``laion_clap/__init__``, whose import reaches the hub."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("laion_clap is not installed")
    folder = spec.submodule_search_locations[0]
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module("clap_module")


@contextmanager
def text_tower_from(config: PretrainedConfig) -> Iterator[None]:
    """Inside the block, laion_clap's ``RobertaModel.from_pretrained('roberta-base')`` builds
    ``config``'s architecture with fresh weights instead of downloading them."""
    module = clap_module().model
    pretrained = module.RobertaModel
    module.RobertaModel = SimpleNamespace(from_pretrained=lambda *args, **kw: pretrained(config))
    try:
        yield
    finally:
        module.RobertaModel = pretrained


def clap_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a LAION-CLAP training checkpoint, as ``CLAP_Module.load_ckpt`` reads
    them (``state_dict``, ``module.`` prefix dropped, no ``position_ids`` buffer)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state.pop("text_branch.embeddings.position_ids", None)
    return state


def clap_input(wav: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One ``(T,)`` clip as laion_clap's ``get_audio_features`` (``rand_trunc``, ``repeatpad``)
    makes it: a random 10 s crop of a longer clip, a shorter one repeated and zero-padded."""
    longer = wav.shape[0] > CLAP_SAMPLES
    if longer:
        start = int(torch.randint(wav.shape[0] - CLAP_SAMPLES + 1, (1,), generator=generator))
        wav = wav[start : start + CLAP_SAMPLES]
    elif wav.shape[0] < CLAP_SAMPLES:
        wav = F.pad(wav.repeat(CLAP_SAMPLES // wav.shape[0]), (0, CLAP_SAMPLES % wav.shape[0]))
    return {"waveform": wav, "longer": torch.tensor([longer])}


class LaionClap:
    """:class:`ClapModel` on laion_clap's ``CLAP`` (HTSAT audio tower, RoBERTa text tower) and a
    local checkpoint; crops of clips over 10 s are drawn from a generator seeded with ``seed``."""

    def __init__(
        self,
        checkpoint: str | Path,
        text_model: str | Path = CLAP_TEXT,
        amodel: str = "HTSAT-base",
        seed: int = 0,
    ) -> None:
        from transformers import RobertaConfig, RobertaTokenizer

        module = clap_module()
        try:
            config = RobertaConfig.from_pretrained(str(text_model), local_files_only=True)
            self.tokenizer = RobertaTokenizer.from_pretrained(
                str(text_model), local_files_only=True
            )
        except OSError as err:
            raise UserError(
                f"CLAP text model {text_model} is neither a folder nor in the local Hugging Face "
                "cache: pass clap_text=FOLDER holding roberta-base's config.json, vocab.json and "
                "merges.txt"
            ) from err
        with text_tower_from(config):
            self.model, _ = module.create_model(amodel, "roberta", precision="fp32")
        self.model.load_state_dict(clap_state_dict(checkpoint))
        self.model.eval()
        self.generator = torch.Generator().manual_seed(seed)

    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model.get_audio_embedding([clap_input(w, self.generator) for w in wav])

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=CONTEXT_LENGTH,
            return_tensors="pt",
        )
        return self.model.get_text_embedding(dict(tokens))


def build_clap(
    checkpoint: str | Path | None,
    hint: str = "clap_weights=PATH",
    text_model: str | Path = CLAP_TEXT,
) -> ClapScore:
    """The CLAP score when ``checkpoint`` is given and laion_clap installed, else an empty slot."""
    if checkpoint is None:
        return ClapScore(
            None, note=f"not computed: no CLAP weights (pass {hint} to {CLAP_URL}{CLAP_FILE})"
        )
    if not Path(checkpoint).is_file():
        raise UserError(
            f"CLAP checkpoint {checkpoint} does not exist: download {CLAP_URL}{CLAP_FILE}"
        )
    try:
        model = LaionClap(checkpoint, text_model)
    except ImportError:
        return ClapScore(
            None, note="not computed: laion_clap is not installed (pip install -e .[eval])"
        )
    return ClapScore(model, note=f"LAION CLAP ({Path(checkpoint).name})")
