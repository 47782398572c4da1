"""KL (PaSST) and CLAP on the real architectures: random weights saved as the released checkpoint
files are, loaded through ``build_kl`` / ``build_clap``, checked against the metric's formula
computed directly from the underlying modules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import RobertaConfig, RobertaTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from musicgen.errors import UserError
from musicgen.metrics.clap import (
    CLAP_FILE,
    CLAP_SAMPLES,
    build_clap,
    clap_module,
    text_tower_from,
)
from musicgen.metrics.kl import PASST_ARCH, PASST_FILE, KLDivergence, build_kl

# roberta-base's config.json (the architecture; the CLAP checkpoint holds the weights).
ROBERTA_BASE = {
    "architectures": ["RobertaForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514,
    "model_type": "roberta",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "type_vocab_size": 1,
    "vocab_size": 50265,
}
CAPTIONS = ["a calm chorale", "energetic drums and bass", "a sad piano waltz"]


# ---------------------------------------------------------------------------------------------
# KL divergence with PaSST-S


@pytest.fixture(scope="module")
def passt(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A random PaSST-S (heads scaled so label distributions differ) and its saved state dict."""
    from hear21passt.models.passt import get_model

    torch.manual_seed(0)
    net = get_model(arch=PASST_ARCH, pretrained=False).eval()
    with torch.no_grad():
        for head in (net.head[1], net.head_dist):
            head.weight.mul_(40.0)
    path = tmp_path_factory.mktemp("passt") / PASST_FILE
    torch.save(net.state_dict(), path)
    return net, path


def passt_probs(net: torch.nn.Module, chunk: torch.Tensor) -> np.ndarray:
    """Softmax of PaSST's logits for one mono 32 kHz chunk, with ``hear21passt.base``'s mel."""
    from hear21passt.models.preprocess import AugmentMelSTFT

    mel = AugmentMelSTFT(
        n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
        htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000,
    ).eval()  # fmt: skip
    with torch.no_grad():
        logits, _ = net(mel(chunk[None]).unsqueeze(1))
    return logits[0].double().softmax(-1).numpy()


def test_passt_kl_matches_the_formula_on_the_model_outputs(passt: tuple) -> None:
    net, path = passt
    kl = build_kl(path)
    assert kl.available and kl.note == "PaSST-S AudioSet label distributions"
    metric = KLDivergence(kl.classifier, segment_seconds=0.5)  # 16000-sample chunks
    gen = torch.Generator().manual_seed(3)
    preds = torch.randn(2, 1, 35200, generator=gen) * 0.3
    targets = torch.randn(2, 1, 35200, generator=gen).cumsum(-1) * 0.01
    sizes = [35200, 24000]  # chunks 16000 + 16000 (+ 3200 <= 0.15 s dropped); 16000 + 8000
    metric.update(preds, targets, 32000, sizes)
    expected_pq, expected_qp = [], []
    for i, size in enumerate(sizes):
        for start in range(0, size, 16000):
            stop = min(start + 16000, size)
            if stop - start <= 4800:
                continue
            p = passt_probs(net, preds[i, 0, start:stop])
            q = passt_probs(net, targets[i, 0, start:stop])
            expected_pq.append(np.sum(q * (np.log(q) - np.log(p + 1e-6))))
            expected_qp.append(np.sum(p * (np.log(p) - np.log(q + 1e-6))))
    result = metric.compute()
    assert result.n == len(expected_pq) == 4
    assert np.mean(expected_pq) > 0.05  # distinct label distributions, not a trivial zero
    assert result.value == pytest.approx(np.mean(expected_pq), rel=1e-4, abs=1e-6)
    assert result.kl_qp == pytest.approx(np.mean(expected_qp), rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# CLAP score with LAION-CLAP (HTSAT-base + RoBERTa)


def write_text_model(folder: Path) -> Path:
    """roberta-base's config and a tiny byte-level BPE vocabulary in roberta's file layout."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(ROBERTA_BASE))
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *bytes_to_unicode().values()]
    merges = [("Ġ", "a"), ("a", "l"), ("Ġ", "c"), ("Ġc", "al"), ("Ġ", "p"), ("i", "a"), ("n", "o")]
    tokens += ["".join(m) for m in merges] + ["<mask>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def clap(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """A random HTSAT-base/RoBERTa CLAP saved as a LAION-CLAP training checkpoint."""
    root = tmp_path_factory.mktemp("clap")
    text_model = write_text_model(root / "roberta-base")
    torch.manual_seed(0)
    with text_tower_from(RobertaConfig.from_pretrained(text_model)):
        model, _ = clap_module().create_model("HTSAT-base", "roberta", precision="fp32")
    model.eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    # Written by transformers < 4.31, which kept this buffer in the state dict.
    state["module.text_branch.embeddings.position_ids"] = torch.arange(514)[None]
    path = root / CLAP_FILE
    torch.save({"epoch": 15, "state_dict": state}, path)
    return model, path, text_model


def clap_cosine(model: torch.nn.Module, tokenizer, wav: torch.Tensor, text: str) -> float:
    """Cosine of the projected audio-tower and text-tower embeddings of one 48 kHz clip."""
    repeated = wav.repeat(CLAP_SAMPLES // wav.shape[0])
    padded = F.pad(repeated, (0, CLAP_SAMPLES - repeated.shape[0]))
    tokens = tokenizer(text, padding="max_length", truncation=True, max_length=77)
    with torch.no_grad():
        audio = model.audio_branch(
            {"waveform": padded[None], "longer": torch.tensor([[False]])}, device="cpu"
        )["embedding"]
        audio = model.audio_projection(audio)[0].double().numpy()
        pooled = model.text_branch(
            input_ids=torch.tensor([tokens["input_ids"]]),
            attention_mask=torch.tensor([tokens["attention_mask"]]),
        ).pooler_output
        text_emb = model.text_projection(pooled)[0].double().numpy()
    return float(audio @ text_emb / (np.linalg.norm(audio) * np.linalg.norm(text_emb)))


@pytest.mark.slow  # builds HTSAT-base + RoBERTa-base: ~15 s
def test_laion_clap_score_matches_the_cosine_of_the_model_embeddings(clap: tuple) -> None:
    model, path, text_model = clap
    score = build_clap(path, text_model=text_model)
    assert score.available and score.note == f"LAION CLAP ({CLAP_FILE})"
    tokenizer = RobertaTokenizer.from_pretrained(text_model)
    assert max(tokenizer(CAPTIONS)["input_ids"][0]) < 300  # the tiny vocabulary, no <unk>
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randn(2, 1, 48000, generator=gen), torch.randn(1, 2, 30000, generator=gen)]
    expected, texts = [], [CAPTIONS[:2], CAPTIONS[2:3]]
    for audio, captions in zip(batches, texts, strict=True):
        score.update(audio * 0.1, 48000, captions)
        for wav, text in zip(audio * 0.1, captions, strict=True):
            expected.append(clap_cosine(model, tokenizer, wav.mean(0), text))
    result = score.compute()
    assert result.n == 3
    assert np.ptp(expected) > 1e-3  # the pairs differ
    assert result.value == pytest.approx(np.mean(expected), rel=1e-5, abs=1e-6)


def test_clap_text_model_must_be_local(tmp_path: Path) -> None:
    path = tmp_path / CLAP_FILE
    path.write_bytes(b"never read")
    with pytest.raises(UserError, match="CLAP text model .*missing.* clap_text=FOLDER"):
        build_clap(path, text_model=tmp_path / "missing")
