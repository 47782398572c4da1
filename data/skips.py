"""Counting samples read and skipped, with one warning per skipped sample naming shard and key."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("data")

SKIP_REASONS = (
    "unreadable_shard",
    "truncated_tar",
    "missing_member",
    "undecodable_audio",
    "non_finite",
    "silent",
    "too_short",
    "misaligned_stems",
    "malformed_json",
    "malformed_midi",
)


class SkipCounter:
    """Counts read samples, their audio seconds, and skipped samples by reason."""

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self.skipped: Counter[str] = Counter()

    def read(self, seconds: float) -> None:
        """Count one sample delivered with ``seconds`` of audio."""
        self.samples += 1
        self.seconds += seconds

    def skip(self, reason: str, shard: str, key: str | None, detail: str = "") -> None:
        """Count one skipped sample and log a warning naming its shard and key."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.skipped[reason] += 1
        where = f"{shard} key {key}" if key else shard
        log.warning("skipped %s (%s)%s", where, reason, f": {detail}" if detail else "")

    def summary(self) -> str:
        """Skip counts as ``reason=n, ...`` (or ``none``)."""
        return ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items())) or "none"
