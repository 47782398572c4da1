"""FAD against independent computations; the EnCodec and CREPE embedders; the KL and CLAP slots."""

from __future__ import annotations

import importlib.util
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from musicgen.errors import UserError
from musicgen.metrics.clap import ClapScore, build_clap
from musicgen.metrics.embeddings import CrepeEmbedder, build_embedder, embed_all
from musicgen.metrics.fad import GaussianStats, embedding_stats, fad, frechet_distance
from musicgen.metrics.kl import KLDivergence, build_kl


def reference_fad(a: np.ndarray, b: np.ndarray) -> float:
    """FAD via eigendecompositions: Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2))."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    centred_a, centred_b = a - mu_a, b - mu_b
    s_a = centred_a.T @ centred_a / (len(a) - 1)
    s_b = centred_b.T @ centred_b / (len(b) - 1)
    values, vectors = np.linalg.eigh(s_a)
    root_a = vectors @ np.diag(np.sqrt(values.clip(min=0))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ s_b @ root_a).clip(min=0)
    return float(
        np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(middle).sum()
    )


def correlated(rng: np.random.Generator, n: int, dim: int, shift: float) -> np.ndarray:
    mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    return rng.standard_normal((n, dim)) @ mixing + shift


def test_fad_of_a_set_against_itself_is_zero() -> None:
    emb = correlated(np.random.default_rng(0), 400, 32, 0.3)
    result = fad(emb, emb)
    assert abs(result.value) < 1e-8
    assert (result.n_a, result.n_b) == (400, 400)


@pytest.mark.parametrize(("n_a", "n_b", "dim"), [(500, 300, 16), (2000, 1500, 128)])
def test_fad_matches_an_eigendecomposition_reference(n_a: int, n_b: int, dim: int) -> None:
    rng = np.random.default_rng(dim)
    a, b = correlated(rng, n_a, dim, 0.0), correlated(rng, n_b, dim, 0.2) * 1.3
    result = fad(torch.from_numpy(a).float(), b)  # torch float32 input is fitted in float64
    expected = reference_fad(a.astype(np.float32).astype(np.float64), b)
    assert result.value == pytest.approx(expected, rel=1e-6)
    assert result.value > 0.1 and (result.n_a, result.n_b) == (n_a, n_b)


def test_fewer_samples_than_dimensions_still_matches_the_reference() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((20, 32)), rng.standard_normal((24, 32)) + 0.1
    assert fad(a, b).value == pytest.approx(reference_fad(a, b), rel=1e-4, abs=1e-6)


def test_diagonal_gaussians_match_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    var1, var2 = rng.uniform(0.1, 3.0, 10), rng.uniform(0.1, 3.0, 10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(
        expected, rel=1e-10
    )
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9.0 + 1.0)


def test_singular_covariances_give_the_closed_form() -> None:
    s = np.diag([1.0, 0.0, 2.0])
    assert frechet_distance(np.zeros(3), s, np.ones(3), s) == pytest.approx(3.0, abs=1e-5)


def test_embedding_stats_are_mean_and_unbiased_covariance() -> None:
    x = np.random.default_rng(2).standard_normal((50, 4))
    stats = embedding_stats(x)
    outer = sum(np.outer(row - x.mean(0), row - x.mean(0)) for row in x) / 49
    np.testing.assert_allclose(stats.sigma, outer, atol=1e-12)
    np.testing.assert_allclose(stats.mu, x.sum(0) / 50, atol=1e-12)
    assert stats.n == 50


def test_stats_round_trip_through_npz(tmp_path: Path) -> None:
    stats = embedding_stats(np.random.default_rng(4).standard_normal((30, 6)))
    loaded = GaussianStats.load(stats.save(tmp_path / "ref" / "stats.npz"))
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.n == 30
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(UserError, match="cannot read embedding stats"):
        GaussianStats.load(tmp_path / "bad.npz")


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        fad(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        embedding_stats(np.zeros(5))
    with pytest.raises(ValueError, match="mismatched Gaussian shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        embedding_stats(np.full((3, 2), np.nan))


# ---------------------------------------------------------------------------------------------
# Embedders


def test_crepe_embedding_is_the_classifier_input() -> None:
    embedder = CrepeEmbedder("tiny", hop_seconds=0.05)
    wav = torch.sin(2 * torch.pi * 330 * torch.arange(8000) / 16000)[None] * 0.5
    emb = embedder.embed(wav, 16000)
    assert emb.shape == (1 + 8000 // 800, 256)
    with torch.no_grad():  # CREPE's own forward = sigmoid(classifier(penultimate))
        expected = embedder.model(embedder.frames(wav, 16000))
    torch.testing.assert_close(torch.sigmoid(embedder.model.classifier(emb)), expected)
    # the pitch bin of a 330 Hz tone: 20 cents per bin from 1997.38 cents (C1 ~ 32.7 Hz)
    cents = 1200 * np.log2(330 / 10)
    assert abs(int(expected.argmax(dim=1).median()) - round((cents - 1997.3794) / 20)) <= 1


def test_crepe_frames_are_centred_and_normalised() -> None:
    embedder = CrepeEmbedder("tiny", hop_seconds=0.1)
    frames = embedder.frames(torch.randn(2, 44100), 44100)  # stereo at 44.1 kHz -> 1 s at 16 kHz
    assert frames.shape == (1 + 16000 // 1600, 1024)
    torch.testing.assert_close(frames.mean(dim=1), torch.zeros(11), atol=1e-5, rtol=0)
    torch.testing.assert_close(frames.std(dim=1), torch.ones(11), atol=1e-4, rtol=0)


def test_encodec_embedding_is_the_encoder_latent(tmp_path: Path) -> None:
    from encodec import EncodecModel

    torch.manual_seed(0)
    official = EncodecModel.encodec_model_24khz(pretrained=False)
    torch.save(official.state_dict(), tmp_path / "encodec_24khz-d7cc33bc.th")
    embedder = build_embedder("encodec", tmp_path, check_hash=False)
    wav = torch.randn(1, 16000) * 0.1  # 1 s at 16 kHz -> 24 kHz -> 75 frames
    emb = embedder.embed(wav, 16000)
    assert emb.shape == (75, 128)
    from musicgen.audio import convert_audio

    with torch.no_grad():
        expected = official.encoder(convert_audio(wav, 16000, 24000, 1)[None])[0].T
    torch.testing.assert_close(emb, expected, rtol=1e-4, atol=1e-4)
    assert "24000 Hz" in embedder.name


def test_embed_all_stacks_every_frame_for_fad() -> None:
    embedder = CrepeEmbedder("tiny", hop_seconds=0.25)
    clips = [(torch.randn(1, 16000) * 0.1, 16000), (torch.randn(1, 8000) * 0.1, 16000)]
    emb = embed_all(embedder, clips)
    assert emb.shape == (5 + 3, 256)
    result = fad(emb, emb)
    assert abs(result.value) < 1e-6 and result.n_a == 8
    with pytest.raises(ValueError, match="no clips"):
        embed_all(embedder, [])


def test_build_embedder_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown embedding model 'openl3'"):
        build_embedder("openl3")
    with pytest.raises(UserError, match="encodec embedding needs weights"):
        build_embedder("encodec")
    with pytest.raises(UserError, match="holds no official EnCodec weights"):
        build_embedder("encodec", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        build_embedder("encodec", tmp_path / "missing.th")
    with pytest.raises(UserError, match="unknown CREPE capacity"):
        build_embedder("crepe", capacity="huge")


# ---------------------------------------------------------------------------------------------
# KL and CLAP slots


class ToyClassifier(torch.nn.Module):
    """Logits from a fixed projection of a coarse magnitude spectrum (a stand-in for PaSST)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16, 5)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(wav, n=30).abs()[:, :16]
        return self.proj(spectrum)


def test_kl_matches_a_direct_computation() -> None:
    classifier = ToyClassifier()
    metric = KLDivergence(classifier, sample_rate=1000, segment_seconds=1.0)
    gen = torch.Generator().manual_seed(1)
    preds, targets = torch.randn(2, 1, 2500, generator=gen), torch.randn(2, 1, 2500, generator=gen)
    metric.update(preds, targets, sample_rate=1000, sizes=[2500, 2100])
    expected_pq, expected_qp, chunks = 0.0, 0.0, 0
    for i, starts in enumerate([(0, 1000, 2000), (0, 1000)]):  # the 0.1 s tail (<= 0.15 s) goes
        for start in starts:
            stop = min(start + 1000, 2500)
            with torch.no_grad():
                p = classifier(preds[i, :, start:stop]).softmax(-1)[0].double().numpy()
                q = classifier(targets[i, :, start:stop]).softmax(-1)[0].double().numpy()
            expected_pq += float(np.sum(q * (np.log(q) - np.log(p + 1e-6))))
            expected_qp += float(np.sum(p * (np.log(p) - np.log(q + 1e-6))))
            chunks += 1
    result = metric.compute()
    assert result.n == chunks == 5
    assert result.value == pytest.approx(expected_pq / 5, rel=1e-5)
    assert result.kl_qp == pytest.approx(expected_qp / 5, rel=1e-5)
    same = KLDivergence(classifier, sample_rate=1000, segment_seconds=1.0)
    same.update(preds, preds, sample_rate=1000)
    assert same.compute().value == pytest.approx(0.0, abs=1e-5)


def test_kl_and_clap_slots_say_why_they_are_empty(tmp_path: Path) -> None:
    kl = build_kl(None)
    kl.update(torch.zeros(1, 1, 10), torch.zeros(1, 1, 10), 16000)
    result = kl.compute()
    assert result.value is None and not kl.available
    assert result.note.startswith("not computed: no PaSST weights (pass kl_weights=PATH")
    clap = build_clap(None, hint="metrics.clap=PATH")
    assert clap.compute().value is None
    assert clap.compute().note.startswith("not computed: no CLAP weights (pass metrics.clap=PATH")
    with pytest.raises(UserError, match="CLAP checkpoint .* does not exist"):
        build_clap(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="PaSST weights .* do not exist"):
        build_kl(tmp_path / "missing.pt")


def test_slots_report_a_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"x")
    for module, build in (("laion_clap", build_clap), ("hear21passt", build_kl)):
        assert importlib.util.find_spec(module) is not None, f"{module} is a dev dependency"
        with monkeypatch.context() as patch:
            for name in [m for m in sys.modules if m.split(".")[0] == module] + [module]:
                patch.setitem(sys.modules, name, None)
            metric = build(checkpoint)
        assert not metric.available
        expected = f"not computed: {module} is not installed (pip install -e .[eval])"
        assert metric.compute().note == expected


class HashClap:
    """A deterministic stand-in for CLAP: audio -> low spectrum, text -> seeded vector."""

    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(wav, n=14).abs()[:, :8]

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([
            torch.randn(8, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
            for t in texts
        ])  # fmt: skip


def test_clap_score_is_the_mean_cosine_over_pairs() -> None:
    model, score = HashClap(), ClapScore(HashClap(), note="stand-in")
    gen = torch.Generator().manual_seed(2)
    batches = [
        (torch.randn(2, 1, 4800, generator=gen), ["a", "b"]),
        (torch.randn(1, 1, 4800, generator=gen), ["c"]),
    ]
    cosines = []
    for audio, texts in batches:
        score.update(audio, 48000, texts)
        for wav, text in zip(audio, texts, strict=True):
            a = model.embed_audio(wav).double().numpy()[0]
            t = model.embed_text([text]).double().numpy()[0]
            cosines.append(a @ t / (np.linalg.norm(a) * np.linalg.norm(t)))
    result = score.compute()
    assert result.n == 3 and result.note == "stand-in"
    assert result.value == pytest.approx(np.mean(cosines), rel=1e-9)
    with pytest.raises(ValueError, match="2 audio items but 1 captions"):
        score.update(torch.zeros(2, 1, 10), 48000, ["x"])
