"""Every command the README shows is checked here as typed (placeholders filled in):

* ``python train.py`` / ``python evaluate.py``: composed by Hydra with the command's overrides (each
  job of a ``-m`` sweep), and resolved, which is where a wrong key (``optim.lr`` instead of
  ``solver.module.optim.lr``) or a bad value fails; the tests of each solver run them for real with
  tiny overrides, and tests/test_slurm.py submits the local-SLURM sweep;
* ``python -m <module>`` and ``python benchmarks/<script>.py``: the module starts (``--help``) and
  accepts every ``--flag`` the README gives it;
* ``make <target>``: a Makefile target; ``scripts/<script> <verb>``: a verb the script has.

A README command of any other form fails the test: add a check for it here.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from solvers.runtime import register_resolvers

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDERS = {"solver": "compression", "dataset": "synth", "preset": "compression_tiny"}


def readme_commands() -> list[str]:
    """The shell commands of the README's ``bash`` blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


def fill_placeholders(command: str) -> str:
    """``<solver>`` (or ``solver=...``) -> a real choice, other ``<...>`` -> ``x``; optional
    ``[key=value ...]`` and a trailing ``...`` dropped, other optional groups kept."""
    command = re.sub(r"\[key=value \.\.\.\]", "", command)
    command = re.sub(r"\[([^\]]*)\]", r"\1", command)
    command = re.sub(
        r"(\w+)=\.\.\.", lambda m: f"{m.group(1)}={PLACEHOLDERS.get(m.group(1), 'x')}", command
    )
    command = re.sub(r"(^|\s)\.\.\.(?=\s|$)", " ", command)  # "and other arguments"
    return re.sub(r"<([^>]+)>", lambda m: PLACEHOLDERS.get(m.group(1), "x"), command)


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of a Hydra ``-m`` sweep: one per combination of the comma-separated values."""
    choices = [
        [f"{o.split('=', 1)[0]}={v}" for v in o.split("=", 1)[1].split(",")]
        if "=" in o and "," in o and "[" not in o
        else [o]
        for o in overrides
    ]
    return [list(job) for job in itertools.product(*choices)]


def compose_entry(config: str, overrides: list[str]) -> None:
    register_resolvers()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    # Interpolations and resolvers run too (those of the hydra node need a running job).
    OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )


@cache
def help_text(argv: tuple[str, ...]) -> str:
    done = subprocess.run(
        [sys.executable, *argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check_flags(command: str, argv: tuple[str, ...]) -> None:
    text = help_text(argv)
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", command):
        assert flag in text, f"{' '.join(argv)} has no {flag} (README: {command})"


COMMANDS = readme_commands()


def test_the_readme_shows_commands() -> None:
    assert any(c.startswith("python train.py -m hydra/launcher=slurm") for c in COMMANDS)
    assert "make test" in COMMANDS and "make demo" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(command: str) -> None:
    filled = fill_placeholders(command)
    words = shlex.split(filled.replace('eval "$(', "").replace(')"', ""))
    if words[:2] in (["python", "train.py"], ["python", "evaluate.py"]):
        overrides = [w for w in words[2:] if w != "-m"]
        for job in sweep_jobs(overrides):
            compose_entry(words[1].removesuffix(".py"), job)
    elif words[:2] == ["python", "-m"]:
        subcommand = words[3:4] if len(words) > 3 and words[3].isidentifier() else []
        check_flags(filled, ("-m", words[2], *subcommand))
    elif words[0] == "python" and words[1].startswith("benchmarks/"):
        check_flags(filled, (words[1],))
    elif words[0] == "make":
        assert re.search(rf"^{re.escape(words[1])}:", (REPO / "Makefile").read_text(), re.M)
    elif words[0].startswith("scripts/"):
        script = (REPO / words[0]).read_text()
        assert re.search(rf"^\s*{re.escape(words[1])}\)", script, re.M), command
    else:
        pytest.fail(f"no check for this README command: {command}")
