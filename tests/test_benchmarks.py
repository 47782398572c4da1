"""Every benchmark script starts as documented (``python benchmarks/<name>.py``): run from its own
folder, none of them may shadow a project package (``benchmarks/musicgen.py`` once hid the
``musicgen`` package from ``benchmarks/compression.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))
PACKAGES = {"musicgen", "data", "solvers"}


def test_no_benchmark_is_named_like_a_package() -> None:
    assert SCRIPTS
    assert not PACKAGES & {script.stem for script in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_benchmark_imports_and_shows_help(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script.relative_to(REPO)), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_make_bench_runs_every_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    bench = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert {s.name for s in SCRIPTS} == {
        line.split("benchmarks/")[1].split()[0]
        for line in bench.splitlines()
        if "benchmarks/" in line
    }
