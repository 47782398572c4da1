"""Grammar-constrained MT3 decoding: targets always pass, decoded tokens always obey the rules."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen import transcribe as cli
from musicgen.transcription import EOS_ID, VOCAB_SIZE, notes_to_segment_tokens
from musicgen.transcription.grammar import TokenGrammar
from musicgen.transcription.model import MT3Config, MT3Model
from musicgen.transcription.transcriber import Transcriber
from musicgen.transcription.vocabulary import NUM_SPECIAL_IDS, decode_event

TINY = MT3Config(
    d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1
)


def violations(tokens: list[int], repeats: int) -> list[str]:
    """The grammar's rules, re-derived in plain Python over one segment's model ids."""
    found = []
    in_tie, after_shift, step, velocity, program = True, False, 0, 1, 0
    sounding, started, drums = Counter(), Counter(), Counter()
    for t in tokens:
        if t == EOS_ID:
            break
        try:
            kind, value = decode_event(t - NUM_SPECIAL_IDS)
        except ValueError:
            found.append(f"id {t} outside the codec")
            continue
        if kind == "shift":
            if in_tie or after_shift or value <= step:
                found.append(f"shift {value} after step {step}")
            step, started, drums = value, Counter(), Counter()
        elif kind == "tie":
            if not in_tie:
                found.append("second tie")
            in_tie = False
        elif kind == "velocity":
            velocity = value
        elif kind == "program":
            program = value
        elif kind == "drum":
            drums[value] += 1
            if in_tie or velocity == 0 or drums[value] > 2:
                found.append(f"drum {value}")
        elif in_tie or velocity > 0:  # tie or onset
            started[program, value] += 1
            sounding[program, value] += 1
            if started[program, value] > repeats:
                found.append(f"repeated onset {program}/{value}")
        else:
            if sounding[program, value] == 0:
                found.append(f"note-off of silent {program}/{value}")
            sounding[program, value] -= 1
            started[program, value] = max(0, started[program, value] - 1)
        after_shift = kind == "shift"
    return found


def dense_track(seed: int) -> np.ndarray:
    """Several instruments with unisons across programs, re-struck notes and doubled drums."""
    rng = np.random.default_rng(seed)
    rows = []
    for program, pitch, is_drum in [
        (0, 60, 0), (1, 60, 0), (40, 67, 0), (41, 67, 0), (33, 40, 0), (0, 36, 1), (0, 42, 1),
    ]:  # fmt: skip
        t = rng.uniform(0, 0.2)
        while t < 5.5:
            length = 0.1 if is_drum else rng.uniform(0.02, 1.5)
            rows.append((t, t + length, pitch, 90, program, is_drum, 0, 0))
            if is_drum and rng.random() < 0.3:
                rows.append((t + 0.002, t + 0.1, pitch, 90, program, is_drum, 0, 0))
            t += length + rng.choice([0.0, 0.003, rng.uniform(0.0, 0.3)])
    return np.asarray(rows, dtype=np.float64)


@pytest.mark.parametrize("granularity", ["full", "midi_class", "flat"])
def test_every_training_target_is_allowed(granularity: str) -> None:
    for seed in range(3):
        for target in notes_to_segment_tokens(dense_track(seed), 3, granularity):
            grammar = TokenGrammar(1, VOCAB_SIZE, granularity)
            for t in target:
                assert grammar.allowed()[0, int(t)], (granularity, seed, int(t))
                grammar.update(torch.tensor([int(t)]))
            assert not violations([int(t) for t in target], 1 if granularity == "full" else 4)


def test_constrained_decoding_obeys_the_grammar_where_greedy_does_not() -> None:
    greedy_broken = 0
    for seed in range(3):
        torch.manual_seed(seed)
        model = MT3Model(TINY).eval()
        frames = torch.randn(4, 256, 512)
        constrained = model.generate(frames, max_length=64, grammar="full")
        for row in constrained.tolist():
            assert violations(row, 1) == []
        greedy = model.generate(frames, max_length=64)
        greedy_broken += sum(bool(violations(row, 1)) for row in greedy.tolist())
    assert greedy_broken > 0  # random models emit invalid tokens: the test can fail


def test_constrained_decoding_is_the_same_with_and_without_cache() -> None:
    torch.manual_seed(3)
    model = MT3Model(TINY).eval()
    frames = torch.randn(2, 256, 512)
    cached = model.generate(frames, max_length=40, use_cache=True, grammar="flat")
    assert torch.equal(cached, model.generate(frames, 40, use_cache=False, grammar="flat"))


def test_cli_grammar_option(tmp_path: Path) -> None:
    torch.manual_seed(0)
    export = Transcriber(MT3Model(TINY)).save(tmp_path / "model")
    audio = np.random.default_rng(0).standard_normal(40_000).astype(np.float32) * 0.1
    sf.write(tmp_path / "in.wav", audio, 16000)
    args = [str(tmp_path / "in.wav"), str(tmp_path / "x.mid"), "--checkpoint", str(export)]
    assert cli.main([*args, "--max-length", "24", "--grammar", "full"]) == 0
    with pytest.raises(SystemExit):
        cli.main([*args, "--grammar", "coarse"])
