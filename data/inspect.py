"""``python -m data.inspect "<shard pattern>"``: read shards through the pipeline and report.

Prints a table and one final JSON line: samples read, samples skipped by reason, total audio
seconds, and decode throughput (audio seconds per wall second).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from data.decode import FIELDS, SampleSpec
from data.shardlist import expand_pattern
from data.skips import SKIP_REASONS, SkipCounter
from data.streams import decoded_samples
from musicgen.errors import UserError


def inspect_shards(shards: list[str], spec: SampleSpec, show_progress: bool = True) -> dict:
    """Iterate every sample of ``shards`` with ``spec`` and return the report as a dict."""
    skips = SkipCounter()
    started = time.perf_counter()
    samples = decoded_samples(shards, spec, np.random.default_rng(0), skips)
    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task("reading", total=None)
        for _ in samples:
            progress.update(
                task,
                advance=1,
                description=f"read {skips.samples} skipped {sum(skips.skipped.values())}",
            )
    wall = time.perf_counter() - started
    return {
        "shards": len(shards),
        "samples_read": skips.samples,
        "samples_skipped": sum(skips.skipped.values()),
        "skipped_by_reason": {r: skips.skipped.get(r, 0) for r in SKIP_REASONS},
        "audio_seconds": round(skips.seconds, 3),
        "wall_seconds": round(wall, 3),
        "audio_seconds_per_second": round(skips.seconds / wall, 1) if wall > 0 else None,
        "samples_per_second": round(skips.samples / wall, 2) if wall > 0 else None,
    }


def print_report(report: dict, console: Console) -> None:
    table = Table(title="data.inspect")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in (
        "shards",
        "samples_read",
        "samples_skipped",
        "audio_seconds",
        "wall_seconds",
        "audio_seconds_per_second",
        "samples_per_second",
    ):
        table.add_row(key.replace("_", " "), str(report[key]))
    for reason, count in report["skipped_by_reason"].items():
        if count:
            table.add_row(f"  skipped: {reason}", str(count))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.inspect", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "pattern",
        help='shards, e.g. "datasets/synth/train-{000000..000003}.tar" or "datasets/synth/*.tar"',
    )
    parser.add_argument(
        "--sample-rate", type=int, default=32000, help="decode at this rate (default 32000)"
    )
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument(
        "--fields", default="audio", help=f"comma-separated, from {','.join(FIELDS)}"
    )
    parser.add_argument(
        "--segment", type=float, default=None, help="crop seconds (default: whole files)"
    )
    parser.add_argument("--quiet-skips", action="store_true", help="do not log each skipped sample")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if args.quiet_skips else logging.WARNING, format="%(message)s"
    )
    try:
        spec = SampleSpec(
            args.sample_rate,
            args.channels,
            args.segment,
            tuple(args.fields.split(",")),
            "start" if args.segment else "none",
        )
        report = inspect_shards(
            expand_pattern(args.pattern), spec, show_progress=sys.stderr.isatty()
        )
    except (UserError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report, Console())
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
