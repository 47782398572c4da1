"""Every benchmark script starts as documented (``python benchmarks/<name>.py``): run from its own
folder, none of them may shadow a project package (``benchmarks/musicgen.py`` once hid the
``musicgen`` package from ``benchmarks/compression.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))
PACKAGES = {"musicgen", "data", "solvers"}


def test_no_benchmark_is_named_like_a_package() -> None:
    assert SCRIPTS
    assert not PACKAGES & {script.stem for script in SCRIPTS}


# Each script run with ``--help`` as ``python benchmarks/<name>.py`` runs it (its folder first on
# sys.path), all in one interpreter to pay the imports once: a shadowed package fails the first.
HELP_ALL = """
import runpy, sys
for script in sys.argv[1:]:
    sys.path[0], sys.argv = "benchmarks", [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        assert done.code in (0, None), (script, done.code)
    print("USAGE-OK", script)
"""


def test_every_benchmark_imports_and_shows_help() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELP_ALL, *(str(s.relative_to(REPO)) for s in SCRIPTS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("usage:") == done.stdout.count("USAGE-OK") == len(SCRIPTS)


def test_make_bench_runs_every_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    bench = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert {s.name for s in SCRIPTS} == {
        line.split("benchmarks/")[1].split()[0]
        for line in bench.splitlines()
        if "benchmarks/" in line
    }


def test_data_inspect_and_the_throughput_benchmark_run_on_shards(toy_dataset: Path) -> None:
    """The README's ``python -m data.inspect "<shards>" --fields ...`` and
    ``python benchmarks/data_throughput.py --root <dataset>``, for real on the toy dataset."""
    inspect = subprocess.run(
        [sys.executable, "-m", "data.inspect", f"{toy_dataset}/train-*.tar",
         "--fields", "audio,stems,notes,caption"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert inspect.returncode == 0, inspect.stderr[-2000:]
    assert json.loads(inspect.stdout.strip().splitlines()[-1])["samples_read"] == 8
    bench = subprocess.run(
        [sys.executable, "benchmarks/data_throughput.py", "--root", str(toy_dataset),
         "--repeats", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert bench.stdout.strip().splitlines()[-1].startswith("{")  # the JSON line
