"""Source separation metrics as MUSDB18 results are reported.

* ``sdr``: BSS Eval v4 SDR through the ``museval`` package (``museval.evaluate``, images mode,
  1 s windows and hop, as SiSEC 2018 and the Spleeter and Demucs papers score MUSDB18): per stem,
  the median over a track's windows ignoring NaN (silent windows), then the median over tracks.
  museval scores the stems of a track together and leaves a window NaN for every stem when any
  reference or estimate is silent there (``joint=True``, the MUSDB18 protocol); ``joint=False``
  scores each stem alone, which gives the same value for every window the joint call scores
  (v4's SDR of a stem depends only on its own reference and estimate) and also scores windows
  where another stem is silent: the choice for datasets whose tracks lack some stems. museval
  refuses a stem whose reference or estimate is silent throughout; here all its windows are NaN
  (jointly: every stem's windows, as museval's window rule would have it).
* ``usdr``: the utterance-level SDR of the Music Demixing / Sound Demixing challenges
  (``10 log10((sum ref^2 + 1e-7) / (sum (ref - est)^2 + 1e-7))`` over a whole track, Demucs'
  ``new_sdr``), per track and stem, averaged over tracks. A track whose reference stem is
  silent throughout has no uSDR (NaN) and is left out of that stem's mean (every MUSDB18 track
  has all four stems, so there this is the challenges' mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

USDR_DELTA = 1e-7  # the MDX challenge's (and Demucs') guard against log(0)


def _as_sources(audio: np.ndarray) -> np.ndarray:
    """``(S, C, T)`` audio as float64 ``(S, T, C)``, museval's layout."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 3:
        raise ValueError(f"expected (stems, channels, samples), got shape {audio.shape}")
    return np.ascontiguousarray(audio.transpose(0, 2, 1))


def framewise_sdr(
    references: np.ndarray,
    estimates: np.ndarray,
    sample_rate: int,
    window_seconds: float = 1.0,
    hop_seconds: float = 1.0,
    joint: bool = True,
) -> np.ndarray:
    """BSS Eval v4 SDR ``(S, windows)`` of ``estimates`` against ``references`` (both
    ``(S, C, T)``), NaN in windows museval does not score (see the module docstring)."""
    import museval
    import museval.metrics

    refs, ests = _as_sources(references), _as_sources(estimates)
    if refs.shape != ests.shape:
        raise ValueError(f"references {refs.shape} and estimates {ests.shape} differ in shape")
    win, hop = round(window_seconds * sample_rate), round(hop_seconds * sample_rate)
    # museval refuses a reference or estimate that is silent throughout; every window of it
    # would be NaN (for all stems when joint)
    silent = ~refs.any(axis=(1, 2)) | ~ests.any(axis=(1, 2))
    out = np.full((len(refs), museval.metrics.Framing(win, hop, refs.shape[1]).nwin), np.nan)
    if joint and not silent.any():
        out[:] = museval.evaluate(refs, ests, win=win, hop=hop)[0]
    elif not joint:
        for i in np.flatnonzero(~silent):
            out[i] = museval.evaluate(refs[i : i + 1], ests[i : i + 1], win=win, hop=hop)[0][0]
    return out


def track_sdr(
    references: np.ndarray, estimates: np.ndarray, sample_rate: int, joint: bool = True
) -> np.ndarray:
    """Per stem, the median of a track's 1 s window SDRs ignoring NaN (NaN when none is scored)."""
    frames = framewise_sdr(references, estimates, sample_rate, joint=joint)
    out = np.full(len(frames), np.nan)
    for i, row in enumerate(frames):
        if not np.isnan(row).all():
            out[i] = np.nanmedian(row)
    return out


def track_usdr(references: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    """Per stem, the utterance-level SDR of a track (``(S, C, T)`` inputs); NaN for a silent
    reference."""
    refs = np.asarray(references, dtype=np.float64)
    ests = np.asarray(estimates, dtype=np.float64)
    if refs.shape != ests.shape or refs.ndim != 3:
        raise ValueError(
            f"expected two (stems, channels, samples) arrays, got {refs.shape} and {ests.shape}"
        )
    signal = np.square(refs).sum(axis=(1, 2))
    error = np.square(refs - ests).sum(axis=(1, 2))
    scores = 10 * np.log10((signal + USDR_DELTA) / (error + USDR_DELTA))
    return np.where(signal > 0, scores, np.nan)


def dataset_sdr(per_track: Sequence[np.ndarray]) -> np.ndarray:
    """Per stem, the median over tracks of their SDRs, ignoring NaN (NaN when no track scores)."""
    return _reduce(per_track, np.nanmedian)


def dataset_usdr(per_track: Sequence[np.ndarray]) -> np.ndarray:
    """Per stem, the mean over tracks of their uSDRs, ignoring NaN (silent references)."""
    return _reduce(per_track, np.nanmean)


def _reduce(per_track: Sequence[np.ndarray], reduce) -> np.ndarray:
    table = np.asarray(per_track, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"expected one row of per-stem scores per track, got shape {table.shape}")
    out = np.full(table.shape[1], np.nan)
    for i, column in enumerate(table.T):
        if not np.isnan(column).all():
            out[i] = reduce(column)
    return out
