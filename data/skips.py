"""Counting samples read and skipped, with warnings naming shard and key.

Each (reason, shard, key) is named once (a training stream may crop the same piece again and
again), and at most :data:`WARN_LIMIT` times per reason and reader; later skips are only counted.
A damaged shard (:data:`SHARD_REASONS`) is counted once per counter, however often a training
stream passes over it; the streams give each shard's own problems to one reader only
(:func:`data.streams.decoded_samples`), so the readers' counts add up to each skip once.
A :class:`SharedSkips` adds the counts of a stream's loader workers up where the main process
reads them.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import Counter
from collections.abc import Mapping

log = logging.getLogger("data")

SHARD_REASONS = ("unreadable_shard", "not_a_tar", "truncated_tar")
SKIP_REASONS = (
    *SHARD_REASONS,
    "unsafe_key",
    "missing_member",
    "undecodable_audio",
    "non_finite",
    "silent",
    "too_short",
    "misaligned_stems",
    "malformed_json",
    "malformed_midi",
)
WARN_LIMIT = 20


class SharedSkips:
    """Skip counts by reason in shared memory: a stream's loader workers add, any process reads."""

    def __init__(self) -> None:
        self._counts = multiprocessing.Array("q", len(SKIP_REASONS))

    def add(self, reason: str) -> None:
        """Count one skip for ``reason``."""
        with self._counts.get_lock():
            self._counts[SKIP_REASONS.index(reason)] += 1

    def totals(self) -> dict[str, int]:
        """The counts so far, every reason included."""
        with self._counts.get_lock():
            return dict(zip(SKIP_REASONS, self._counts[:], strict=True))


def skip_summary(counts: Mapping[str, int]) -> str:
    """Non-zero counts as ``reason=n, ...`` (or ``none``)."""
    return ", ".join(f"{r}={n}" for r, n in sorted(counts.items()) if n) or "none"


def skip_note(counts: Mapping[str, int]) -> str:
    """A table footnote on the samples left out of its numbers."""
    total = sum(counts.values())
    if not total:
        return "Skipped samples: none."
    return (
        f"Skipped samples (unusable data, not in these numbers): {total} ({skip_summary(counts)})."
    )


class SkipCounter:
    """Counts read samples, their audio seconds, and skipped samples by reason (also into
    ``shared`` when given)."""

    def __init__(self, shared: SharedSkips | None = None) -> None:
        self.shared = shared
        self.samples = 0
        self.seconds = 0.0
        self.skipped: Counter[str] = Counter()
        self._named: set[tuple[str, str, str | None]] = set()
        self._damaged: set[tuple[str, str]] = set()

    def read(self, seconds: float) -> None:
        """Count one sample delivered with ``seconds`` of audio."""
        self.samples += 1
        self.seconds += seconds

    def skip(self, reason: str, shard: str, key: str | None, detail: str = "") -> None:
        """Count one skipped sample; warn the first time its shard and key skip for ``reason``."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        if reason in SHARD_REASONS:
            if (reason, shard) in self._damaged:
                return
            self._damaged.add((reason, shard))
        self.skipped[reason] += 1
        if self.shared is not None:
            self.shared.add(reason)
        if (reason, shard, key) in self._named:
            return
        named = sum(1 for r, _, _ in self._named if r == reason)
        if named < WARN_LIMIT:
            self._named.add((reason, shard, key))
            where = f"{shard} key {key}" if key else shard
            log.warning("skipped %s (%s)%s", where, reason, f": {detail}" if detail else "")
        elif named == WARN_LIMIT:
            self._named.add((reason, "", None))
            log.warning("more samples skipped (%s): counted, no longer named", reason)

    def summary(self) -> str:
        """Skip counts as ``reason=n, ...`` (or ``none``)."""
        return skip_summary(self.skipped)
