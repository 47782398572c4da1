"""Dependencies point one way: musicgen/ imports neither Lightning nor Hydra, data/ not solvers/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

IMPORT_ALL = """
import importlib, pkgutil, sys
package = importlib.import_module({package!r})
for info in pkgutil.walk_packages(package.__path__, {package!r} + "."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
print("forbidden:", sorted({{m.split(".")[0] for m in sys.modules}} & set({forbidden!r})))
"""


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("musicgen", ["lightning", "pytorch_lightning", "hydra", "solvers", "data"]),
        ("data", ["solvers"]),
    ],
)
def test_package_imports_only_what_the_layout_allows(package: str, forbidden: list[str]) -> None:
    code = IMPORT_ALL.format(package=package, forbidden=forbidden)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Third-party imports may print (pyfluidsynth does when CI is set): read our line only.
    verdict = [line for line in result.stdout.splitlines() if line.startswith("forbidden:")]
    assert verdict == ["forbidden: []"], result.stdout[-2000:]
