"""The frame pitch head (``MT3Config.pitch_from_frame``, not MT3): pitch logits gain a read-out
of the encoder frame at the time of the latest ``shift`` in the decoder's input; and the frame
input (``MT3Config.frame_input``): that frame, projected, joins the decoder's input."""

from __future__ import annotations

import math

import torch

from musicgen.transcription import token
from musicgen.transcription.frame_pitch import current_steps
from musicgen.transcription.model import MT3Config, MT3Model
from musicgen.transcription.time_pointer import shift_frames

TINY = dict(
    d_model=32, num_heads=2, head_dim=16, d_ff=32, num_encoder_layers=1, num_decoder_layers=1
)
PITCHES = slice(token("pitch", 0), token("pitch", 127) + 1)


def expected_frame(encoded: torch.Tensor, step: int) -> torch.Tensor:
    """Direct computation: the encoder output of the first item interpolated at the window
    centre of ``step``'s time, clamped to the segment."""
    last = encoded.shape[1] - 1
    frame = min(max(float(shift_frames(torch.tensor([step]))[0]), 0.0), float(last))
    low = math.floor(frame)
    return encoded[0, low] * (1 - (frame - low)) + encoded[0, min(low + 1, last)] * (frame - low)


def head_model(seed: int = 0, **options: bool) -> MT3Model:
    """A tiny model with the head, whose read-out is random (it starts at zero)."""
    torch.manual_seed(seed)
    model = MT3Model(MT3Config(**TINY, dropout=0.0, pitch_from_frame=True, **options)).eval()
    torch.nn.init.normal_(model.decoder.frame_pitch.readout.weight, std=0.5)
    if model.decoder.time_pointer is not None:
        torch.nn.init.normal_(model.decoder.time_pointer.query.weight, std=0.5)
    return model


def test_current_steps_follow_the_latest_shift() -> None:
    tokens = torch.tensor(
        [
            [
                0,
                token("tie"),
                token("shift", 5),
                token("pitch", 60),
                token("shift", 12),
                token("velocity", 0),
                token("pitch", 61),
            ]
        ]
    )
    assert current_steps(tokens).tolist() == [[0, 0, 5, 5, 12, 12, 12]]
    assert current_steps(tokens[:, :2], torch.tensor([7])).tolist() == [[7, 7]]
    assert current_steps(tokens[:, 2:3], torch.tensor([7])).tolist() == [[5]]  # a shift sets it


def test_pitch_logits_add_the_read_out_of_the_frame_at_the_current_time() -> None:
    """Against a direct computation: the plain logits plus ``readout(e)`` with ``e`` the encoder
    output interpolated at the window centre of the latest shift's time, clamped to the
    segment; every other token keeps its plain logit."""
    model = head_model()
    tokens = torch.tensor(
        [
            [
                0,
                token("pitch", 3),
                token("shift", 9),
                token("pitch", 60),
                token("shift", 57),
                token("shift", 900),
            ]
        ]
    )
    frames = torch.randn(1, 64, 512)
    logits = model(frames, tokens)
    decoder = model.decoder
    encoded = model.encoder(frames)
    x = decoder.token_embedder(tokens) + decoder.positions[: tokens.shape[1]]
    for layer in decoder.layers:
        x = layer(x, layer.encoder_decoder_attention.keys_values(encoded))
    plain = decoder.logits_dense(decoder.decoder_norm(x))
    for position, step in enumerate(
        [0, 0, 9, 9, 57, 900]
    ):  # frames -8 (clamped), 3.25, 63.25, past the end
        state = expected_frame(encoded, step)
        expected = plain[0, position, PITCHES] + decoder.frame_pitch.readout(state)
        torch.testing.assert_close(logits[0, position, PITCHES], expected, rtol=1e-5, atol=1e-5)
    others = [i for i in range(1536) if not PITCHES.start <= i < PITCHES.stop]
    torch.testing.assert_close(logits[..., others], plain[..., others], rtol=1e-5, atol=1e-5)


def test_frame_input_adds_the_projected_frame_at_the_current_time_to_the_decoder_input() -> None:
    """``MT3Config.frame_input`` (not MT3): every decoder input gains ``projection(e)``, ``e``
    the encoder output at the frame of the time in force (as above); against a direct
    computation, and zero-initialised so that an untrained model is MT3's."""
    torch.manual_seed(0)
    model = MT3Model(MT3Config(**TINY, dropout=0.0, frame_input=True)).eval()
    assert not model.decoder.frame_input.projection.weight.any()
    torch.nn.init.normal_(model.decoder.frame_input.projection.weight, std=0.5)
    tokens = torch.tensor([[0, token("shift", 9), token("pitch", 60), token("shift", 900)]])
    frames = torch.randn(1, 64, 512)
    decoder = model.decoder
    encoded = model.encoder(frames)
    inputs = decoder.token_embedder(tokens) + decoder.positions[: tokens.shape[1]]
    for position, step in enumerate([0, 9, 9, 900]):
        inputs[0, position] += decoder.frame_input.projection(expected_frame(encoded, step))
    x = inputs
    for layer in decoder.layers:
        x = layer(x, layer.encoder_decoder_attention.keys_values(encoded))
    expected = decoder.logits_dense(decoder.decoder_norm(x))
    torch.testing.assert_close(model(frames, tokens), expected, rtol=1e-5, atol=1e-5)
