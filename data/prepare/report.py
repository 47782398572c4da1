"""What a dataset preparation wrote and what it skipped, for its log line and ``index.json``."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)

WARN_LIMIT = 10  # skipped items named in warnings per reason; the rest are only counted
LISTED_LIMIT = 100  # skipped items listed in index.json


class PrepareReport:
    """Counts written items and seconds per split, and skipped items per reason.

    ``noun`` names the items in warnings ("files", "clips"). The first :data:`WARN_LIMIT` skips of
    each reason are logged by name, the first :data:`LISTED_LIMIT` are listed in the summary.
    """

    def __init__(self, noun: str = "items") -> None:
        self.noun = noun
        self.written: Counter[str] = Counter()
        self.seconds = 0.0
        self.skipped: Counter[str] = Counter()
        self.skipped_items: list[str] = []

    def add(self, split: str, seconds: float) -> None:
        """Count one written item of ``seconds`` in ``split``."""
        self.written[split] += 1
        self.seconds += seconds

    def skip(self, reason: str, item: object, detail: str = "") -> None:
        """Count one skipped item (a path or an id) under ``reason``."""
        self.skipped[reason] += 1
        if len(self.skipped_items) < LISTED_LIMIT:
            self.skipped_items.append(str(item))
        if self.skipped[reason] <= WARN_LIMIT:
            log.warning("skipped %s (%s)%s", item, reason, f": {detail}" if detail else "")
        elif self.skipped[reason] == WARN_LIMIT + 1:
            log.warning("more %s %s: counted in the summary but not named", reason, self.noun)

    def as_dict(self) -> dict:
        return {
            "written": dict(self.written),
            "total_seconds": round(self.seconds, 3),
            "skipped": dict(self.skipped),
            f"skipped_{self.noun}": self.skipped_items,
        }

    def line(self) -> str:
        """``written train=3, test=1 (0.01 h); skipped missing_audio=1``."""
        written = ", ".join(f"{s}={n}" for s, n in sorted(self.written.items())) or "nothing"
        skipped = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items())) or "none"
        return f"written {written} ({self.seconds / 3600:.2f} h); skipped {skipped}"
