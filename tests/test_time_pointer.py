"""The time pointer (``MT3Config.time_pointer``, not MT3): shift logits gain a query-key score
against the encoder frame of each shift's time."""

from __future__ import annotations

import math

import torch

from musicgen.transcription import token
from musicgen.transcription.model import MT3Config, MT3Model
from musicgen.transcription.time_pointer import shift_frames
from musicgen.transcription.vocabulary import MAX_SHIFT_STEPS

TINY = dict(
    d_model=32, num_heads=2, head_dim=16, d_ff=32, num_encoder_layers=1, num_decoder_layers=1
)


def pointer_model(seed: int = 0) -> MT3Model:
    """A tiny model with the pointer whose query is random (it starts at zero)."""
    torch.manual_seed(seed)
    model = MT3Model(MT3Config(**TINY, dropout=0.0, time_pointer=True)).eval()
    torch.nn.init.normal_(model.decoder.time_pointer.query.weight, std=0.5)
    return model


def test_shift_logits_add_the_score_of_the_frame_of_their_time() -> None:
    """Against a direct computation: the decoder's plain logits plus ``q . k / sqrt(d)`` with
    the key interpolated between the two frames around the shift's window centre, clamped
    to the segment; every other token keeps its plain logit."""
    model = pointer_model()
    frames, tokens = torch.randn(2, 64, 512), torch.randint(0, 1536, (2, 5))
    logits = model(frames, tokens)
    decoder, pointer = model.decoder, model.decoder.time_pointer
    encoded = model.encoder(frames)
    x = decoder.token_embedder(tokens) + decoder.positions[:5]
    for layer in decoder.layers:
        x = layer(x, layer.encoder_decoder_attention.keys_values(encoded))
    states = decoder.decoder_norm(x)
    plain = decoder.logits_dense(states)
    keys, queries = pointer.key(encoded), pointer.query(states)
    for step in (
        0,
        8,
        9,
        50,
        57,
        1000,
    ):  # frames -8 (clamped), 2, 3.25, 54.5, 63.25 and past the end
        frame = min(max(float(shift_frames(torch.tensor([step]))[0]), 0.0), 63.0)
        low = math.floor(frame)
        key = keys[:, low] * (1 - (frame - low)) + keys[:, min(low + 1, 63)] * (frame - low)
        expected = plain[..., token("shift", step)] + (queries @ key[..., None])[
            ..., 0
        ] / math.sqrt(32)
        torch.testing.assert_close(
            logits[..., token("shift", step)], expected, rtol=1e-5, atol=1e-5
        )
    others = [
        i for i in range(1536) if not token("shift", 0) <= i <= token("shift", MAX_SHIFT_STEPS)
    ]
    torch.testing.assert_close(logits[..., others], plain[..., others], rtol=1e-5, atol=1e-5)


def test_the_zero_query_learns() -> None:
    torch.manual_seed(0)
    model = MT3Model(MT3Config(**TINY, time_pointer=True))
    assert not model.decoder.time_pointer.query.weight.any()
    targets = torch.full((2, 4), token("shift", 30))
    loss = torch.nn.functional.cross_entropy(
        model(torch.randn(2, 64, 512), targets).flatten(0, 1), targets.flatten()
    )
    loss.backward()
    assert model.decoder.time_pointer.query.weight.grad.abs().sum() > 0
