"""MT3 front end, T5 model, KV-cached decoding, checkpoints and the transcription CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
import torch

from musicgen import transcribe as cli
from musicgen.transcription.frontend import LogMelFrontend, split_track, track_frames
from musicgen.transcription.model import (
    MT3Config,
    MT3Model,
    model_from_t5x,
    sinusoidal_positions,
    t5x_name,
)
from musicgen.transcription.tokenize import DecodedNotes
from musicgen.transcription.transcriber import Transcriber

TINY = MT3Config(
    d_model=32,
    num_heads=2,
    head_dim=16,
    d_ff=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dropout=0.0,
)


def reference_logmel(samples: np.ndarray) -> np.ndarray:
    """MT3's spectrogram computed directly: pad_end framing, periodic Hann, |rfft|, HTK
    triangles in mel, natural log with non-positive values replaced by 1e-5."""
    frames = -(-len(samples) // 128)
    padded = np.pad(samples.astype(np.float64), (0, (frames - 1) * 128 + 2048 - len(samples)))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / 2048)
    spectrum = np.abs(
        np.fft.rfft([padded[i * 128 : i * 128 + 2048] * window for i in range(frames)])
    )
    mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)  # noqa: E731
    edges = np.linspace(mel(20.0), mel(7600.0), 514)
    bins = mel(np.linspace(0.0, 8000.0, 1025))
    weights = np.zeros((1025, 512))
    for j in range(512):
        lo, mid, hi = edges[j : j + 3]
        weights[1:, j] = np.clip(
            np.minimum((bins[1:] - lo) / (mid - lo), (hi - bins[1:]) / (hi - mid)), 0, None
        )
    energy = spectrum @ weights
    return np.log(np.where(energy <= 0, 1e-5, energy))


@pytest.mark.parametrize(
    "samples,segments,last_frames",
    [(1000, 1, 8), (32767, 1, 256), (32768, 2, 1), (65536, 3, 1), (100_000, 4, 14)],
)
def test_mt3_padding_rule_and_segment_frames(samples: int, segments: int, last_frames: int) -> None:
    assert track_frames(samples) == samples // 128 + 1  # a whole frame added even at a multiple
    chunks, frames = split_track(torch.zeros(samples))
    assert chunks.shape == (segments, 32768)
    assert frames.tolist() == [256] * (segments - 1) + [last_frames]


def test_log_mel_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(40_000) / 16000
    track = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    track[20_000:] = 0.0  # silence: mel energy 0 -> log(1e-5)
    chunks, frames = split_track(torch.from_numpy(track))
    out = LogMelFrontend()(chunks, frames)
    assert out.shape == (2, 256, 512) and frames.tolist() == [256, 57]
    first = reference_logmel(track[:32768])
    np.testing.assert_allclose(out[0].numpy(), first, atol=2e-3, rtol=1e-4)
    last = reference_logmel(np.pad(track, (0, 313 * 128 - track.size))[32768:])
    np.testing.assert_allclose(out[1, :57].numpy(), last[:57], atol=2e-3, rtol=1e-4)
    assert out[1, 57:].abs().sum() == 0  # padding frames are zeros after the log
    assert out[1, 56].max() == pytest.approx(np.log(1e-5))


def test_sinusoidal_positions_sines_then_cosines() -> None:
    table = sinusoidal_positions(2048, 8)
    rates = np.exp(-np.log(10_000.0) * np.arange(4) / 3)
    np.testing.assert_allclose(table[5, :4], np.sin(5 * rates), atol=1e-6)
    np.testing.assert_allclose(table[5, 4:], np.cos(5 * rates), atol=1e-6)


def test_forward_shapes_and_mt3_small_size() -> None:
    model = MT3Model(TINY)
    logits = model(torch.randn(3, 256, 512), torch.zeros(3, 7, dtype=torch.long))
    assert logits.shape == (3, 7, 1536)
    small = MT3Config()
    assert (small.d_model, small.num_heads, small.head_dim, small.d_ff) == (512, 6, 64, 1024)
    assert (small.num_encoder_layers, small.num_decoder_layers, small.vocab_size) == (8, 8, 1536)


def test_input_conv_sees_only_neighbouring_frames() -> None:
    cfg = MT3Config(**{**TINY.to_dict(), "num_encoder_layers": 0, "input_conv_kernel": 3})
    torch.manual_seed(0)
    encoder = MT3Model(cfg).encoder.eval()
    frames = torch.randn(1, 20, 512)
    moved = frames.clone()
    moved[0, 10] += 1.0
    changed = (encoder(moved) - encoder(frames)).abs().amax(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [9, 10, 11]
    assert MT3Model(TINY).encoder.input_conv is None  # MT3 (and t5x checkpoints): no conv
    with pytest.raises(ValueError, match="odd"):
        MT3Config.from_dict({"input_conv_kernel": 4})


SMALL_MODEL_OPTIONS = [
    {},
    {"time_pointer": True},
    {"pitch_from_frame": True},
    {"time_pointer": True, "pitch_from_frame": True},
    {"frame_input": True},
    {"time_pointer": True, "frame_input": True},
]


def model_with(options: dict[str, bool], seed: int = 0) -> MT3Model:
    """A :data:`TINY` model with the small-model ``options``, their zero-initialised weights
    (the pointer's query, the pitch read-out) made random so that they act."""
    torch.manual_seed(seed)
    model = MT3Model(MT3Config(**{**TINY.to_dict(), **options})).eval()
    for head, name in (
        (model.decoder.time_pointer, "query"),
        (model.decoder.frame_pitch, "readout"),
        (model.decoder.frame_input, "projection"),
    ):
        if head is not None:
            torch.nn.init.normal_(getattr(head, name).weight, std=0.5)
    return model


@pytest.mark.parametrize("options", SMALL_MODEL_OPTIONS, ids=lambda o: "+".join(o) or "mt3")
def test_kv_cached_decoding_equals_uncached(options: dict[str, bool]) -> None:
    model = model_with(options)
    frames = torch.randn(3, 256, 512)
    cached = model.generate(frames, max_length=32, use_cache=True)
    assert torch.equal(cached, model.generate(frames, max_length=32, use_cache=False))
    encoded = model.encoder(frames)
    tokens = torch.randint(0, 1536, (3, 9))
    cache = model.decoder.init_cache(encoded, 9)
    steps = torch.stack([model.decoder.step(tokens[:, i], cache) for i in range(9)], dim=1)
    torch.testing.assert_close(steps, model.decoder(tokens, encoded), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("options", SMALL_MODEL_OPTIONS[1:], ids=lambda o: "+".join(o))
def test_small_model_options_start_as_mt3_and_save_with_the_model(
    options: dict[str, bool], tmp_path: Path
) -> None:
    """Untrained, an option's zero-initialised weights leave MT3's logits unchanged (and MT3's
    own layout has none of its parameters); trained, an exported model reloads with it."""
    torch.manual_seed(0)
    plain = MT3Model(TINY).eval()
    torch.manual_seed(0)
    optioned = MT3Model(MT3Config(**{**TINY.to_dict(), **options})).eval()
    optioned.load_state_dict(plain.state_dict(), strict=False)
    frames, tokens = torch.randn(2, 64, 512), torch.randint(0, 1536, (2, 9))
    assert torch.equal(optioned(frames, tokens), plain(frames, tokens))
    option_modules = {"time_pointer", "frame_pitch", "frame_input"}
    assert not any(option_modules & {*n.split(".")} for n in plain.state_dict())
    trained = model_with(options)
    Transcriber(trained).save(tmp_path / "exported")
    loaded = Transcriber.from_checkpoint(tmp_path / "exported").model
    assert all(getattr(loaded.config, name) for name in options)
    assert torch.equal(loaded(frames, tokens), trained(frames, tokens))


def test_t5x_parameters_map_one_to_one() -> None:
    torch.manual_seed(0)
    model = MT3Model(
        MT3Config(**{**TINY.to_dict(), "head_dim": 64, "num_heads": 1, "dropout": 0.1})
    )
    assert (
        t5x_name("encoder.layers.3.attention.query.weight")
        == "encoder/layers_3/attention/query/kernel"
    )
    assert t5x_name("decoder.token_embedder.weight") == "decoder/token_embedder/embedding"
    assert (
        t5x_name("decoder.layers.0.pre_cross_attention_layer_norm.scale")
        == "decoder/layers_0/pre_cross_attention_layer_norm/scale"
    )
    params = {
        "target/" + t5x_name(k): (v.T if t5x_name(k).endswith("kernel") else v).numpy()
        for k, v in model.state_dict().items()
    }
    loaded = model_from_t5x(params)
    assert loaded.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


@pytest.fixture
def transcriber() -> Transcriber:
    torch.manual_seed(1)
    return Transcriber(MT3Model(TINY), max_length=24)


def test_checkpoint_round_trips_give_identical_transcriptions(
    transcriber: Transcriber, tmp_path: Path
) -> None:
    audio = np.random.default_rng(0).standard_normal((2, 70_000)).astype(np.float32) * 0.1
    expected = transcriber.transcribe_notes(audio, 24000)
    exported = Transcriber.from_checkpoint(transcriber.save(tmp_path / "export"), max_length=24)
    np.testing.assert_array_equal(exported.transcribe_notes(audio, 24000).notes, expected.notes)
    ckpt = tmp_path / "last.ckpt"
    state = {f"model.{k}": v for k, v in transcriber.model.state_dict().items()}
    torch.save(
        {"state_dict": state, "hyper_parameters": {"model": TINY.to_dict()}, "global_step": 3}, ckpt
    )
    restored = Transcriber.from_checkpoint(ckpt, max_length=24)
    np.testing.assert_array_equal(restored.transcribe_notes(audio, 24000).notes, expected.notes)
    assert (
        Transcriber(transcriber.model, batch_size=1, max_length=24)
        .transcribe_notes(audio, 24000)
        .notes.tolist()
        == expected.notes.tolist()
    )


def test_drums_go_to_channel_10(
    transcriber: Transcriber, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    notes = np.asarray(
        [[0.1, 0.5, 60, 100, 33, 0, 0, 0], [0.2, 0.21, 36, 100, 0, 1, 0, 0]], dtype=np.float64
    )
    monkeypatch.setattr(Transcriber, "transcribe_notes", lambda self, wav, sr: DecodedNotes(notes))
    transcriber.transcribe(np.zeros(16000), 16000).write(str(tmp_path / "x.mid"))
    midi = pretty_midi.PrettyMIDI(str(tmp_path / "x.mid"))
    drums = [inst for inst in midi.instruments if inst.is_drum]
    assert len(drums) == 1 and drums[0].notes[0].pitch == 36
    assert [(i.program, i.name) for i in midi.instruments if not i.is_drum] == [
        (33, "Electric Bass (finger)")
    ]


def test_cli_round_trip(
    transcriber: Transcriber, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    export = transcriber.save(tmp_path / "model")
    audio = np.random.default_rng(2).standard_normal(40_000).astype(np.float32) * 0.1
    sf.write(tmp_path / "in.wav", audio, 16000)
    args = [str(tmp_path / "in.wav"), str(tmp_path / "out" / "x.mid"), "--checkpoint", str(export)]
    assert cli.main([*args, "--max-length", "24"]) == 0
    written = pretty_midi.PrettyMIDI(str(tmp_path / "out" / "x.mid"))
    expected = (
        Transcriber.from_checkpoint(export, max_length=24).transcribe_notes(audio, 16000).notes
    )
    assert sum(len(i.notes) for i in written.instruments) == len(expected)
    assert "wrote" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        cli.main(
            [str(tmp_path / "missing.wav"), str(tmp_path / "x.mid"), "--checkpoint", str(tmp_path)]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.wav does not exist" in err[0]
    sf.write(tmp_path / "in.wav", np.zeros(1600, dtype=np.float32), 16000)
    assert (
        cli.main(
            [
                str(tmp_path / "in.wav"),
                str(tmp_path / "x.mid"),
                "--checkpoint",
                str(tmp_path / "none.ckpt"),
            ]
        )
        == 2
    )
    assert "none.ckpt does not exist" in capsys.readouterr().err
