"""CLAP score: cosine similarity of the CLAP embeddings of a caption and of the audio made from it.

As AudioCraft's ``TextConsistencyMetric``: audio is converted to 48 kHz mono, embedded by a LAION
CLAP audio tower and compared with the text tower's embedding of its caption; the score is the
mean cosine similarity over all pairs. The model runs only when ``laion_clap`` is installed and a
local checkpoint is given (MusicGen uses ``music_audioset_epoch_15_esc_90.14.pt``, HTSAT-base);
otherwise :meth:`ClapScore.compute` returns ``value=None`` and the reason, for the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from musicgen.audio import convert_audio
from musicgen.errors import UserError

CLAP_RATE = 48000
CLAP_FILE = "music_audioset_epoch_15_esc_90.14.pt"
CLAP_URL = "https://huggingface.co/lukewys/laion_clap/resolve/main/"


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


class LaionClap:
    """:class:`ClapModel` on the ``laion_clap`` package and a local checkpoint."""

    def __init__(
        self, checkpoint: str | Path, amodel: str = "HTSAT-base", enable_fusion: bool = False
    ) -> None:
        import laion_clap

        self.module = laion_clap.CLAP_Module(enable_fusion=enable_fusion, amodel=amodel)
        self.module.load_ckpt(str(checkpoint))
        self.module.eval()

    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:
        return self.module.get_audio_embedding_from_data(wav, use_tensor=True)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        return self.module.get_text_embedding(texts, use_tensor=True)


def build_clap(checkpoint: str | Path | None, hint: str = "clap_weights=PATH") -> ClapScore:
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
        model = LaionClap(checkpoint)
    except ImportError:
        return ClapScore(
            None, note="not computed: laion_clap is not installed (pip install laion-clap)"
        )
    return ClapScore(model, note=f"LAION CLAP ({Path(checkpoint).name})")
