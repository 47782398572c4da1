"""Chunked codec inference: the codes of whole-signal encoding in bounded memory, and the
48 kHz model's segments and normalisation exactly as the ``encodec`` package computes them."""

from __future__ import annotations

import pytest
import torch
from encodec import EncodecModel

from musicgen.compression import OFFICIAL, CodecConfig, CompressionModel
from musicgen.metrics.embeddings import EncodecEmbedder

NON_CAUSAL = CodecConfig(
    sample_rate=16000, ratios=(8, 5, 4, 2), n_filters=4, dimension=16, n_q=4, bins=512
)


def _random(config: CodecConfig) -> CompressionModel:
    """A model with random weights and random (initialised) codebooks."""
    torch.manual_seed(0)
    model = CompressionModel(config).eval()
    for layer in model.quantizer.vq.layers:
        layer._codebook.embed.normal_()
        layer._codebook.inited.fill_(1)
    return model


@pytest.mark.parametrize(
    "config", [OFFICIAL["encodec_24khz"], NON_CAUSAL], ids=["causal", "non-causal"]
)
def test_chunked_inference_equals_whole_signal(config: CodecConfig) -> None:
    model = _random(config)
    wav = 0.1 * torch.randn(1, 1, int(1.3 * config.sample_rate) + 7)
    whole_codes = model.encode(wav)
    whole_audio = model.decode(whole_codes)
    for chunk in (1, 3):
        assert torch.equal(model.encode(wav, chunk_frames=chunk), whole_codes)
        # Convolutions over windows of other lengths round differently: float32 noise only.
        audio = model.decode(whole_codes, chunk_frames=chunk)
        assert audio.shape == whole_audio.shape
        assert (audio - whole_audio).abs().max() < 1e-5


def test_chunks_bound_the_window_whatever_the_length() -> None:
    model = _random(NON_CAUSAL)
    windows: list[int] = []
    model.encoder.model[0].register_forward_hook(
        lambda m, args, out: windows.append(args[0].shape[-1])
    )
    model.decoder.model[-1].register_forward_hook(
        lambda m, args, out: windows.append(out.shape[-1])
    )
    for seconds in (4, 16):
        windows.clear()
        codes = model.encode(torch.randn(1, 1, seconds * 16000), chunk_frames=10)
        model.decode(codes, chunk_frames=10)
        assert max(windows) < 4 * 10 * 320  # chunk plus context, not the signal


def test_progress_counts_every_sample() -> None:
    seen: list[int] = []
    model = _random(NON_CAUSAL)
    model.compress(torch.randn(1, 3 * 16000 + 5), chunk_frames=7, progress=seen.append)
    assert sum(seen) == 3 * 16000 + 5 and len(seen) > 1


def test_48khz_segments_and_volume_match_the_encodec_package() -> None:
    torch.manual_seed(0)
    official = EncodecModel.encodec_model_48khz(pretrained=False)
    for layer in official.quantizer.vq.layers:
        layer._codebook.embed.normal_()
        layer._codebook.inited.fill_(1)
    ours = CompressionModel(OFFICIAL["encodec_48khz"]).eval()
    ours.load_state_dict(official.state_dict())
    length = int(2.5 * 48000) + 123  # three segments, the last one partial
    t = torch.arange(length) / 48000
    left = 0.3 * torch.sin(2 * torch.pi * 220 * t) * (1 + 3 * (t > 1.2))  # louder after 1.2 s
    wav = torch.stack([left, 0.05 * torch.randn(length)])
    official.set_target_bandwidth(6.0)
    with torch.no_grad():
        frames = official.encode(wav[None])
        their_audio = official.decode(frames)[0, :, :length]
    encoded = ours.compress(wav, ours.codebooks_for(6.0))
    assert torch.equal(encoded.codes, torch.cat([codes[0] for codes, _ in frames], dim=-1))
    assert torch.equal(encoded.scales, torch.cat([scale.view(1) for _, scale in frames]))
    assert encoded.codes.shape[-1] == ours.frames_for(length) and len(encoded.codes.unique()) > 1
    pieces = list(ours.decompress(encoded, length))  # what the command line writes, one by one
    audio = torch.cat(pieces, dim=-1)
    assert len(pieces) > 1 and audio.shape == their_audio.shape
    assert torch.equal(audio, their_audio)


def test_digest_names_the_weights_not_the_file(tmp_path) -> None:
    model = _random(NON_CAUSAL)
    loaded = CompressionModel.load(model.save(tmp_path / "codec"))
    assert loaded.digest() == model.digest() and len(model.digest()) == 16
    with torch.no_grad():
        loaded.decoder.model[0].conv.conv.bias[0] += 1
    assert loaded.digest() != model.digest()


def test_48khz_embedding_is_the_encoder_output_of_each_normalised_segment() -> None:
    """The FAD embedding of the official 48 kHz codec: ``encodec``'s encoder on each 1 s segment
    scaled as ``EncodecModel._encode_frame`` scales it (unit RMS of that segment's mono mix)."""
    torch.manual_seed(0)
    official = EncodecModel.encodec_model_48khz(pretrained=False).eval()
    ours = CompressionModel(OFFICIAL["encodec_48khz"]).eval()
    ours.load_state_dict(official.state_dict())
    length = int(2.2 * 48000)
    t = torch.arange(length) / 48000
    left = 0.3 * torch.sin(2 * torch.pi * 220 * t) * (1 + 9 * (t > 1.2))  # louder after 1.2 s
    wav = torch.stack([left, 0.05 * torch.randn(length)])
    expected = []
    with torch.no_grad():
        for offset in range(0, length, official.segment_stride):
            x = wav[None, :, offset : offset + official.segment_length]
            scale = 1e-8 + x.mean(dim=1, keepdim=True).pow(2).mean(dim=2, keepdim=True).sqrt()
            expected.append(official.encoder(x / scale)[0].T)
    embedding = EncodecEmbedder(ours).embed(wav, 48000)
    torch.testing.assert_close(embedding, torch.cat(expected), rtol=0, atol=1e-5)
