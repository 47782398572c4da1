"""Writing result tables as Markdown, CSV and JSON side by side."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    """A result table: ``rows`` are dicts keyed by column; ``notes`` go under the table."""

    name: str
    title: str
    rows: list[dict] = field(default_factory=list)
    notes: str = ""


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_format(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(
    rows: Sequence[dict], out_dir: str | Path, name: str, title: str = "", notes: str = ""
) -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>.json`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(c for row in rows for c in row))
    paths = {ext: out / f"{name}.{ext}" for ext in ("md", "csv", "json")}
    header = f"## {title}\n\n" if title else ""
    footer = f"\n{notes}\n" if notes else ""
    paths["md"].write_text(header + markdown_table(rows, columns) + footer)
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    paths["json"].write_text(
        json.dumps({"title": title, "rows": list(rows), "notes": notes}, indent=2) + "\n"
    )
    return paths
