"""Where an MT3 checkpoint's onset errors come from, on one split of a prepared dataset.

    python scripts/mt3_diagnose.py runs/<run>/checkpoints/last.ckpt [--root datasets/synth]

The pieces of the split (default ``test``) are transcribed as ``solver=mt3`` evaluates them
(greedy, constrained by the token grammar unless ``--plain``) and compared with the reference:

* ``oracle``: the reference tokenized per inference segment as training targets, decoded back
  through the evaluation's stitching and scored (onset F1 ~1, else a timing bug);
* ``metrics``: the solver's scores (means over pieces);
* ``pooled``: pitched onset F1 over all notes at 50 / 100 / 200 ms, and at 50 ms ignoring pitch;
* ``onset_error_ms``: signed onset errors (estimate - reference) of the one-to-one pairs
  mir_eval matches on pitch within 200 ms: mean, median, histogram, and means per eighth of
  the segment (by the reference onset's place in its segment);
* ``ref_per_eighth`` / ``est_per_eighth``: note counts per eighth of the segment (notes lost
  or piled up at segment borders), ``duplicates_50ms``: estimates repeating a pitch < 50 ms on;
* ``pitch_errors``: reference notes unmatched at 50 ms, by what was estimated within 50 ms of
  their onset: the pitch an octave off, a semitone off, another pitch, or nothing;
* ``teacher_forced_shift_steps``: the model's argmax minus the target at each ``shift`` target
  of the reference tokens (10 ms steps): shares of all shift targets guessed exactly or
  within 2 / 5 steps, guesses that are no shift, the mean and median error of the others.

Prints the per-piece scores, then every number as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mir_eval
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.decode import SampleSpec, decode_sample  # noqa: E402
from data.shards import read_index  # noqa: E402
from data.tar_reader import iter_tar_samples  # noqa: E402
from musicgen.errors import UserError  # noqa: E402
from musicgen.metrics.transcription import dataset_metrics, track_metrics  # noqa: E402
from musicgen.notes import END, IS_DRUM, PITCH, START  # noqa: E402
from musicgen.transcription.frontend import split_track  # noqa: E402
from musicgen.transcription.segments import (  # noqa: E402
    HOP_LENGTH,
    SAMPLE_RATE,
    notes_to_segment_tokens,
    segment_origin_times,
    stitch_segments,
)
from musicgen.transcription.transcriber import Transcriber, transcribe_track  # noqa: E402
from musicgen.transcription.vocabulary import MAX_SHIFT_STEPS, PAD_ID, token  # noqa: E402

TOLERANCES = (0.05, 0.1, 0.2)
EIGHTHS = 8
KEPT_SCORES = ("onset_f1", "onset_precision", "onset_recall", "frame_f1", "multi_full_f1")


def load_pieces(root: Path, split: str) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(key, mono 16 kHz samples, notes in track time) of every piece of ``split``, decoded as
    the evaluation decodes whole pieces."""
    spec = SampleSpec(SAMPLE_RATE, 1, None, ("audio", "notes"), "none")

    def fail(reason: str, key: str | None, err: Exception) -> None:
        raise UserError(f"{root}: {reason} ({key}: {err}); prepare the dataset again")

    try:
        shards = read_index(root, split)["shards"]
    except (FileNotFoundError, KeyError) as err:
        raise UserError(str(err).strip("\"'")) from None
    pieces = []
    for shard in shards:
        for raw in iter_tar_samples(str(root / shard), fail):
            sample = decode_sample(raw, spec, np.random.default_rng(0))
            pieces.append((sample["key"], sample["audio"][0], sample["notes"].numpy()))
    return pieces


def pitched(notes: np.ndarray) -> np.ndarray:
    """The pitched notes of positive length (what onset F1 scores)."""
    return notes[(notes[:, IS_DRUM] == 0) & (notes[:, END] > notes[:, START])]


def match_onsets(
    ref: np.ndarray, est: np.ndarray, tolerance: float, any_pitch: bool = False
) -> list[tuple[int, int]]:
    """mir_eval's one-to-one (ref, est) pairs matched on onset within ``tolerance`` seconds and
    on pitch (or on onset only with ``any_pitch``)."""
    if not len(ref) or not len(est):
        return []
    pitches = [np.full(len(n), 60.0) if any_pitch else n[:, PITCH] for n in (ref, est)]
    return mir_eval.transcription.match_notes(
        ref[:, [START, END]],
        mir_eval.util.midi_to_hz(pitches[0]),
        est[:, [START, END]],
        mir_eval.util.midi_to_hz(pitches[1]),
        onset_tolerance=tolerance,
        offset_ratio=None,
    )


def eighths(onsets: np.ndarray, segment_seconds: float) -> np.ndarray:
    """Which eighth (0-7) of its segment each onset lies in."""
    place = np.mod(onsets, segment_seconds) / segment_seconds
    return np.minimum((place * EIGHTHS).astype(int), EIGHTHS - 1)


def pitch_errors(ref: np.ndarray, est: np.ndarray) -> dict[str, int]:
    """Reference notes unmatched at 50 ms, by the estimates with an onset within 50 ms."""
    matched = {i for i, _ in match_onsets(ref, est, 0.05)}
    counts = {"octave": 0, "semitone": 0, "other_pitch": 0, "no_onset_near": 0}
    for i, note in enumerate(ref):
        if i in matched:
            continue
        near = est[np.abs(est[:, START] - note[START]) <= 0.05]
        diffs = np.abs(near[:, PITCH] - note[PITCH])
        if not len(near):
            counts["no_onset_near"] += 1
        elif ((diffs % 12 == 0) & (diffs > 0)).any():
            counts["octave"] += 1
        elif (diffs == 1).any():
            counts["semitone"] += 1
        else:
            counts["other_pitch"] += 1
    return counts


def duplicates(est: np.ndarray, within: float = 0.05) -> int:
    """Estimated notes that repeat the pitch of an estimate begun less than ``within`` s before."""
    count = 0
    for pitch in np.unique(est[:, PITCH]):
        onsets = np.sort(est[est[:, PITCH] == pitch, START])
        count += int(np.count_nonzero(np.diff(onsets) < within))
    return count


def oracle_notes(notes: np.ndarray, num_segments: int) -> np.ndarray:
    """The reference as the evaluation would decode it from perfect per-segment tokens."""
    tokens = notes_to_segment_tokens(notes, num_segments)
    return stitch_segments(tokens, segment_origin_times(num_segments)).notes


@torch.no_grad()
def shift_errors(transcriber: Transcriber, samples: torch.Tensor, notes: np.ndarray) -> list:
    """Teacher-forced argmax minus target (steps) at every shift target of the piece's
    segments; ``None`` where the argmax is not a shift."""
    model, frames = transcriber.model, transcriber.model_type.segment_frames
    segments, lengths = split_track(samples, frames)
    targets = notes_to_segment_tokens(notes, len(segments), "full", frames)
    first, last = token("shift", 0), token("shift", MAX_SHIFT_STEPS)
    out: list = []
    for segment, length, target in zip(segments, lengths, targets, strict=True):
        target = torch.from_numpy(target)
        inputs = torch.nn.functional.pad(target[None, :-1], (1, 0), value=PAD_ID)
        encoded = model.encoder(transcriber.frontend(segment[None], length[None]))
        guess = model.decoder(inputs, encoded).argmax(-1)[0]
        is_shift = (target >= first) & (target <= last)
        for g, t in zip(guess[is_shift].tolist(), target[is_shift].tolist(), strict=True):
            out.append(g - t if first <= g <= last else None)
    return out


def summarise_errors(errors_ms: np.ndarray, where: np.ndarray) -> dict:
    """Mean, median, spread and per-eighth means of signed onset errors (ms)."""
    if not len(errors_ms):
        return {"pairs_200ms": 0}
    per = [errors_ms[where == b] for b in range(EIGHTHS)]
    return {
        "pairs_200ms": len(errors_ms),
        "mean": float(errors_ms.mean()),
        "median": float(np.median(errors_ms)),
        "mean_abs": float(np.abs(errors_ms).mean()),
        "share_within_50": float(np.mean(np.abs(errors_ms) <= 50)),
        "hist_20ms_from_-200": np.histogram(errors_ms, np.arange(-200, 201, 20))[0].tolist(),
        "mean_per_eighth": [round(float(e.mean()), 1) if len(e) else None for e in per],
    }


def summarise_shifts(shifts: list) -> dict:
    """Shares of all shift targets guessed exactly / within 2 / 5 steps (a non-shift guess is a
    miss), and the mean and median error of the shift guesses."""
    known = np.asarray([s for s in shifts if s is not None], dtype=float)
    out = {"targets": len(shifts), "non_shift_argmax": len(shifts) - len(known)}
    if not len(known):
        return out
    for name, steps in (("exact", 0), ("within_2", 2), ("within_5", 5)):
        out[name] = float(np.count_nonzero(np.abs(known) <= steps) / len(shifts))
    return {**out, "mean": float(known.mean()), "median": float(np.median(known))}


def diagnose(
    checkpoint: str,
    root: str,
    split: str = "test",
    max_length: int = 512,
    grammar: str | None = "full",
    teacher_forcing: bool = True,
) -> dict:
    """Every number of the module docstring for ``checkpoint`` on ``split`` of ``root``."""
    transcriber = Transcriber.from_checkpoint(checkpoint, max_length=max_length, grammar=grammar)
    kind = transcriber.model_type
    segment_seconds = kind.segment_frames * HOP_LENGTH / SAMPLE_RATE
    pooled = {f"onset_f1_{round(t * 1000)}ms": np.zeros(3) for t in TOLERANCES}
    pooled["onset_f1_50ms_any_pitch"] = np.zeros(3)
    oracle, scores, errors, where, shifts = [], [], [], [], []
    ref_eighths, est_eighths = np.zeros(EIGHTHS, int), np.zeros(EIGHTHS, int)
    wrong = dict.fromkeys(("octave", "semitone", "other_pitch", "no_onset_near"), 0)
    repeats = 0
    for key, samples, notes in load_pieces(Path(root), split):
        num_segments = len(split_track(samples, kind.segment_frames)[0])
        oracle.append(track_metrics(notes, oracle_notes(notes, num_segments)))
        decoded = transcribe_track(
            transcriber.model,
            transcriber.frontend,
            samples,
            max_length=max_length,
            grammar=grammar,
            model_type=kind,
        ).notes
        scores.append(track_metrics(notes, decoded))
        print(
            f"{key}: onset F1 {scores[-1]['onset_f1']:.3f}, frame F1 {scores[-1]['frame_f1']:.3f}"
        )
        ref, est = pitched(notes), pitched(decoded)
        for tolerance in TOLERANCES:
            matched = len(match_onsets(ref, est, tolerance))
            pooled[f"onset_f1_{round(tolerance * 1000)}ms"] += (matched, len(ref), len(est))
        matched = len(match_onsets(ref, est, 0.05, any_pitch=True))
        pooled["onset_f1_50ms_any_pitch"] += (matched, len(ref), len(est))
        for i, j in match_onsets(ref, est, 0.2):
            errors.append(1000 * (est[j, START] - ref[i, START]))
            where.append(eighths(ref[i : i + 1, START], segment_seconds)[0])
        ref_eighths += np.bincount(eighths(ref[:, START], segment_seconds), minlength=EIGHTHS)
        est_eighths += np.bincount(eighths(est[:, START], segment_seconds), minlength=EIGHTHS)
        for name, count in pitch_errors(ref, est).items():
            wrong[name] += count
        repeats += duplicates(est)
        if teacher_forcing:
            shifts += shift_errors(transcriber, samples, notes)
    result = {
        "checkpoint": str(checkpoint),
        "split": split,
        "oracle": {k: v for k, v in dataset_metrics(oracle).items() if k in KEPT_SCORES},
        "metrics": {k: v for k, v in dataset_metrics(scores).items() if k in KEPT_SCORES},
        "pooled": {k: 2 * m / (r + e) if r + e else 0.0 for k, (m, r, e) in pooled.items()},
        "ref_notes": int(ref_eighths.sum()),
        "est_notes": int(est_eighths.sum()),
        "ref_per_eighth": ref_eighths.tolist(),
        "est_per_eighth": est_eighths.tolist(),
        "duplicates_50ms": repeats,
        "onset_error_ms": summarise_errors(np.asarray(errors), np.asarray(where)),
        "pitch_errors": wrong,
    }
    if teacher_forcing:
        result["teacher_forced_shift_steps"] = summarise_shifts(shifts)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a .ckpt of train.py solver=mt3 (or an export)")
    parser.add_argument("--root", default="datasets/synth", help="a prepared dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per segment")
    parser.add_argument("--plain", action="store_true", help="plain greedy decoding")
    parser.add_argument("--no-teacher-forcing", action="store_true", help="skip shift errors")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        result = diagnose(
            args.checkpoint,
            args.root,
            args.split,
            args.max_length,
            None if args.plain else "full",
            not args.no_teacher_forcing,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
