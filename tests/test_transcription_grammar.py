"""Grammar-constrained MT3 decoding (MT3's and the piano model's token formats): targets always
pass, decoded tokens always obey the rules."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen import transcribe as cli
from musicgen.transcription import (
    EOS_ID,
    PAD_ID,
    VOCAB_SIZE,
    notes_to_segment_tokens,
    segment_origin_times,
    stitch_segments,
)
from musicgen.transcription.grammar import GrammarSpec, TokenGrammar
from musicgen.transcription.model import MT3Config, MT3Model
from musicgen.transcription.transcriber import MODEL_TYPES, Transcriber
from musicgen.transcription.vocabulary import NUM_SPECIAL_IDS, decode_event
from solvers.transcription import MT3Solver
from tests.test_mt3_parity import ours as crop_target
from tests.test_mt3_parity import random_track

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


# --- the piano token format (ismir2021: no ties, 127 velocity bins, flat programs) ------------

PIANO = MODEL_TYPES["ismir2021"]
PIANO_SHIFT = 409  # the last step of a 512-frame (4.096 s) segment
PIANO_TINY = MT3Config(
    vocab_size=1664,
    d_model=32,
    num_heads=2,
    head_dim=16,
    d_ff=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
)


def piano_event(t: int) -> tuple[str, int]:
    return PIANO.codec.decode_event(t - NUM_SPECIAL_IDS)


def piano_id(kind: str, value: int = 0) -> int:
    return PIANO.codec.encode_event(kind, value) + NUM_SPECIAL_IDS


def piano_violations(tokens: list[int], repeats: int, flat: bool = True) -> list[str]:
    """The piano format's rules, re-derived in plain Python over one segment's model ids."""
    found = []
    step, velocity, program, before = 0, None, 0 if flat else None, None
    sounding, started, drums, carried_ended = Counter(), Counter(), Counter(), Counter()
    for t in tokens:
        if t == EOS_ID:
            if before in ("shift", "velocity", "program"):
                found.append(f"EOS after {before}")
            break
        try:
            kind, value = piano_event(t)
        except ValueError:
            found.append(f"id {t} outside the codec")
            continue
        if kind == "shift":
            if before in ("shift", "velocity", "program") or not step < value <= PIANO_SHIFT:
                found.append(f"shift {value} after {before} at step {step}")
            step, started, drums = value, Counter(), Counter()
        elif kind == "tie":
            found.append("tie")
        elif kind == "velocity":
            if before == "velocity" or value == velocity:
                found.append(f"velocity {value} after {before}")
            velocity = value
        elif kind == "program":
            if flat or before in ("velocity", "program") or value == program:
                found.append(f"program {value}")
            program = value
        elif kind == "drum":
            drums[value] += 1
            if not velocity or before == "program" or drums[value] > 2:
                found.append(f"drum {value}")
        elif velocity is None or program is None:
            found.append(f"pitch {value} before its velocity or program")
        elif velocity > 0:
            started[program, value] += 1
            sounding[program, value] += 1
            if started[program, value] > repeats:
                found.append(f"repeated onset {program}/{value}")
            if repeats == 1:  # full programs: no note from before the segment outlasts it
                carried_ended[program, value] = repeats
        elif sounding[program, value] > 0:  # note-off of a note of the segment
            sounding[program, value] -= 1
            started[program, value] = max(0, started[program, value] - 1)
        else:  # note-off of one of at most ``repeats`` notes from before the segment
            carried_ended[program, value] += 1
            if carried_ended[program, value] > repeats:
                found.append(f"note-off of silent {program}/{value}")
        before = kind
    return found


def first_rejected(targets: list[np.ndarray], spec: GrammarSpec) -> list[int]:
    """Per sequence, the position of the first token the grammar masks (-1: none), all
    sequences fed to one batched grammar."""
    ids = torch.full((len(targets), max(map(len, targets))), PAD_ID)
    for i, target in enumerate(targets):
        ids[i, : len(target)] = torch.as_tensor(np.asarray(target, dtype=np.int64))
    grammar = TokenGrammar(len(targets), spec.codec.vocab_size, spec)
    rejected = torch.full((len(targets),), -1)
    live = torch.ones(len(targets), dtype=torch.bool)
    for j in range(ids.shape[1]):
        masked = live & ~grammar.allowed()[grammar.rows, ids[:, j]] & (rejected < 0)
        rejected[masked] = j
        grammar.update(ids[:, j])
        live &= ids[:, j] != EOS_ID
    return rejected.tolist()


def piano_targets(granularity: str) -> list[np.ndarray]:
    """The piano tokenizer's outputs for random tracks (velocities 1-127, six programs, drums,
    times on and off the grid): whole-track segments and random training crops."""
    rng = np.random.default_rng(21)
    targets = []
    for _ in range(25):
        track = random_track(rng)
        targets += notes_to_segment_tokens(track, 3, granularity, 512, PIANO.codec, ties=False)
        for _ in range(8):
            a = int(rng.integers(0, 1400))
            b = min(a + (512 if rng.random() < 0.9 else int(rng.integers(1, 4))), 1500)
            targets.append(np.asarray(crop_target(track, a, b, granularity, piano=True)))
    return targets


@pytest.mark.parametrize("granularity", ["flat", "full"])
def test_every_piano_target_is_allowed(granularity: str) -> None:
    targets = piano_targets(granularity)
    assert first_rejected(targets, PIANO.grammar(granularity)) == [-1] * len(targets)
    repeats = 4 if granularity == "flat" else 1
    assert all(not piano_violations(t.tolist(), repeats, granularity == "flat") for t in targets)
    events = [piano_event(int(t)) for target in targets for t in target if t != EOS_ID]
    velocities = {v for kind, v in events if kind == "velocity"}
    assert len(targets) == 275 and len(velocities) > 100 and 0 in velocities
    assert max(v for kind, v in events if kind == "shift") >= 405
    assert ("drum", 36) in events or ("drum", 40) in events
    assert all(kind != "tie" for kind, _ in events)
    assert any(kind == "program" for kind, _ in events) == (granularity == "full")
    assert sum(unmatched_offs(t.tolist()) for t in targets) > 50  # offs of notes begun before


PIANO_REJECTED = {  # (granularity, prefix, masked next token, an allowed alternative)
    "tie": ("flat", [], ("tie", 0), ("shift", 1)),
    "program under flat": ("flat", [], ("program", 0), ("velocity", 80)),
    "pitch before a velocity": ("flat", [], ("pitch", 60), ("velocity", 80)),
    "drum before a velocity": ("flat", [], ("drum", 36), ("velocity", 80)),
    "shift past the segment": ("flat", [], ("shift", PIANO_SHIFT + 1), ("shift", PIANO_SHIFT)),
    "EOS after a velocity": ("flat", [("velocity", 80)], EOS_ID, ("pitch", 60)),
    "shift after a velocity": ("flat", [("velocity", 80)], ("shift", 3), ("drum", 36)),
    "two velocities": ("flat", [("velocity", 80)], ("velocity", 81), ("pitch", 60)),
    "the current velocity": ("flat", [("velocity", 80), ("pitch", 60)], ("velocity", 80), ("velocity", 0)),
    "EOS after a shift": ("flat", [("shift", 5)], EOS_ID, ("velocity", 1)),
    "two shifts": ("flat", [("shift", 5)], ("shift", 6), ("velocity", 1)),
    "a shift back": ("flat", [("shift", 5), ("velocity", 1), ("pitch", 1)], ("shift", 5), ("shift", 6)),
    "a second onset (full)": ("full", [("program", 0), ("velocity", 9), ("pitch", 60)], ("pitch", 60), ("pitch", 61)),
    "a fifth onset (flat)": ("flat", [("velocity", 9), *[("pitch", 60)] * 4], ("pitch", 60), ("pitch", 61)),
    "a drum hit at velocity 0": ("flat", [("velocity", 0)], ("drum", 36), ("pitch", 60)),
    "a second carried note-off (full)": ("full", [("program", 0), ("velocity", 0), ("pitch", 60)], ("pitch", 60), ("pitch", 61)),
    "a note-off after the onset's": ("full", [("program", 0), ("velocity", 9), ("pitch", 60), ("shift", 9), ("velocity", 0), ("pitch", 60)], ("pitch", 60), EOS_ID),
    "pitch before a program (full)": ("full", [("velocity", 9)], ("pitch", 60), ("drum", 36)),
    "drum after a program": ("full", [("program", 3)], ("drum", 36), ("velocity", 2)),
    "EOS after a program": ("full", [("program", 3)], EOS_ID, ("velocity", 2)),
    "the current program": ("full", [("program", 3), ("velocity", 9), ("pitch", 60)], ("program", 3), ("program", 4)),
}  # fmt: skip


@pytest.mark.parametrize("case", PIANO_REJECTED)
def test_piano_grammar_masks_what_no_target_holds(case: str) -> None:
    granularity, prefix, masked, alternative = PIANO_REJECTED[case]
    prefix_ids = [piano_id(*event) for event in prefix]
    ids = [t if isinstance(t, int) else piano_id(*t) for t in (masked, alternative)]
    grammar = TokenGrammar(1, PIANO.codec.vocab_size, PIANO.grammar(granularity))
    for t in prefix_ids:
        assert grammar.allowed()[0, t], (case, t)
        grammar.update(torch.tensor([t]))
    allowed = grammar.allowed()[0]
    assert not allowed[ids[0]] and allowed[ids[1]]
    assert not allowed[[0, 2, PIANO.codec.num_codec_ids + NUM_SPECIAL_IDS]].any()  # PAD, UNK, extra
    repeats = 4 if granularity == "flat" else 1
    flat = granularity == "flat"
    assert piano_violations([*prefix_ids, ids[0]], repeats, flat)  # the re-derivation agrees
    assert not piano_violations([*prefix_ids, ids[1]], repeats, flat)


def unmatched_offs(row: list[int]) -> int:
    """Note-offs (``flat``) of a pitch that no onset of ``row`` left sounding: the only tokens
    of a segment in the piano format that the note decoder may reject (the note they end may
    have begun in an earlier segment, or the decoder ended it at a re-onset of its pitch)."""
    sounding, velocity, count = set(), None, 0
    for t in row:
        if t == EOS_ID:
            break
        kind, value = piano_event(t)
        if kind == "velocity":
            velocity = value
        elif kind == "pitch" and velocity:
            sounding.add(value)
        elif kind == "pitch":
            count += value not in sounding
            sounding.discard(value)
    return count


def test_constrained_piano_decoding_obeys_the_grammar_where_greedy_does_not() -> None:
    spec = PIANO.grammar("flat")
    greedy_invalid = constrained_invalid = 0
    for seed in range(2):
        torch.manual_seed(seed)
        model = MT3Model(PIANO_TINY).eval()
        frames = torch.randn(3, 512, 512)
        origins = segment_origin_times(3, PIANO.segment_frames)
        rows = model.generate(frames, max_length=128, grammar=spec).tolist()
        for row in rows:
            assert piano_violations(row, 4) == []
        decoded = stitch_segments(rows, origins, codec=PIANO.codec, ties=False)
        assert decoded.dropped == 0 and decoded.invalid <= sum(map(unmatched_offs, rows))
        assert len(decoded.notes) > 50 and len(np.unique(decoded.notes[:, 3])) > 20  # velocities
        constrained_invalid += decoded.invalid
        greedy = model.generate(frames, max_length=128).tolist()
        assert any(piano_violations(row, 4) for row in greedy)  # the test can fail
        decoded = stitch_segments(greedy, origins, codec=PIANO.codec, ties=False)
        greedy_invalid += decoded.invalid + decoded.dropped
    assert greedy_invalid > 10 * max(constrained_invalid, 1)


def test_cli_grammar_with_a_piano_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    export = Transcriber(MT3Model(PIANO_TINY)).save(tmp_path / "piano")
    audio = np.random.default_rng(0).standard_normal(70_000).astype(np.float32) * 0.1
    sf.write(tmp_path / "in.wav", audio, 16000)
    args = [str(tmp_path / "in.wav"), str(tmp_path / "x.mid"), "--checkpoint", str(export)]
    assert cli.main([*args, "--max-length", "48", "--grammar", "flat"]) == 0
    transcriber = Transcriber.from_checkpoint(export, grammar="flat", max_length=48)
    assert transcriber.model_type.name == "ismir2021"
    decoded = transcriber.transcribe_notes(audio, 16000)
    assert decoded.dropped == 0 and len(decoded.notes) > 0


def test_piano_solver_decodes_with_the_grammar() -> None:
    torch.manual_seed(0)
    optim = {"name": "adamw", "lr": 1e-3}
    model = {k: getattr(PIANO_TINY, k) for k in ("d_model", "num_heads", "head_dim", "d_ff")}
    layers = {"num_encoder_layers": 1, "num_decoder_layers": 1}
    scores = {}
    for constrained in (False, True):
        torch.manual_seed(0)
        mt3 = MT3Solver(
            {**model, **layers},
            optim,
            max_decode_length=64,
            model_type="ismir2021",
            constrained_decoding=constrained,
        ).eval()
        batch = {
            "audio": torch.randn(1, 1, 70_000) * 0.1,
            "notes": [torch.tensor([[0.5, 1.5, 60, 100, 0, 0, 0, 0]], dtype=torch.float64)],
            "key": ["a"],
        }
        with torch.no_grad():
            mt3.validation_step(batch, 1)
        scores[constrained] = mt3._tracks["valid"][0]["invalid_tokens"]
    assert scores[False] > scores[True]
