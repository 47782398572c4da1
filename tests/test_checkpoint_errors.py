"""Checkpoint problems are one ``error:`` line and exit 2 at every entry point that loads one, and
the message never suggests ``weights_only=False`` (issue 14, item 7)."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen.errors import UserError
from musicgen.generate import main as generate_main
from musicgen.musicgen_model import MusicGen
from musicgen.transcribe import main as transcribe_main
from musicgen.transcription.transcriber import Transcriber
from solvers.resume import resume_checkpoint
from tests.fixtures.toy_solver import ToyAutoencoder
from tests.test_mt3_solver import solver as mt3_solver

REPO = Path(__file__).resolve().parents[1]
TOY_CONF = REPO / "tests" / "fixtures" / "conf"


def save(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def mt3_state() -> dict:
    mt3 = mt3_solver()
    return {"state_dict": mt3.state_dict(), "hyper_parameters": dict(mt3.hparams)}


def damaged(folder: Path, real: Path) -> dict[str, Path]:
    """Empty, garbage, truncated and code-carrying files, and an arbitrary dict."""
    folder.mkdir(exist_ok=True)
    files = {
        "empty": b"",
        "garbage": b"this is no checkpoint\n" * 50,
        "truncated": real.read_bytes()[: real.stat().st_size // 2],
    }
    paths = {name: folder / f"{name}.ckpt" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    paths["code"] = save(folder / "code.ckpt", {"state_dict": OrderedDict(), "x": ToyAutoencoder})
    paths["no_state"] = save(folder / "no_state.ckpt", {"epoch": 1})
    return paths


def assert_one_error(code: int, capsys: pytest.CaptureFixture, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert lines[-1].startswith("error: ") and sum("error" in line for line in lines) == 1, err
    assert "weights_only" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[-1], err
    return lines[-1]


@pytest.fixture(scope="module")
def mt3_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(tmp_path_factory.mktemp("mt3") / "mt3.ckpt", mt3_state())


def test_transcribe_cli_names_each_checkpoint_problem(
    mt3_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    audio = tmp_path / "in.wav"
    sf.write(audio, np.zeros(1600, dtype=np.float32), 16000)
    state = torch.load(mt3_ckpt, weights_only=True)
    resized = mt3_state()
    resized["hyper_parameters"]["model"] = {**resized["hyper_parameters"]["model"], "d_ff": 32}
    cases = damaged(tmp_path / "bad", mt3_ckpt) | {
        "recorded_other": save(
            tmp_path / "recorded.ckpt", {**state, "solver_config": {"name": "musicgen"}}
        ),
        "old_other": save(
            tmp_path / "old.ckpt", {"state_dict": {}, "hyper_parameters": {"codec": {}, "lm": {}}}
        ),
        "resized": save(tmp_path / "resized.ckpt", {**resized, "state_dict": state["state_dict"]}),
    }
    for name, path in cases.items():
        code = transcribe_main([str(audio), str(tmp_path / "out.mid"), "--checkpoint", str(path)])
        line = assert_one_error(code, capsys, str(path))
        assert name != "recorded_other" or "solver=musicgen, not solver=mt3" in line
    assert not (tmp_path / "out.mid").exists()
    with pytest.raises(UserError, match="truncated"):
        Transcriber.from_checkpoint(cases["truncated"])
    assert Transcriber.from_checkpoint(mt3_ckpt).model.config.d_model == 32


def test_transcriber_exports_and_t5x_files_that_are_damaged(tmp_path: Path) -> None:
    export = Transcriber(mt3_solver().model).save(tmp_path / "export")
    (export / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be loaded"):
        Transcriber.from_checkpoint(export)
    (tmp_path / "t5x.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        Transcriber.from_checkpoint(tmp_path / "t5x.npz")


@pytest.fixture(scope="module")
def musicgen_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_musicgen_generate import checkpoint
    from tests.test_musicgen_solver import write_tiny_codec, write_tiny_text_encoder

    root = tmp_path_factory.mktemp("musicgen")
    assets = {
        "codec": write_tiny_codec(root / "codec"),
        "text": write_tiny_text_encoder(root / "text"),
    }
    return checkpoint(assets, root / "text.ckpt", melody=False)


def test_generate_cli_names_each_checkpoint_problem(
    musicgen_ckpt: Path, mt3_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    state = torch.load(musicgen_ckpt, weights_only=True)
    first = next(iter(state["state_dict"]))
    cases = damaged(tmp_path / "bad", musicgen_ckpt) | {
        "recorded_other": save(
            tmp_path / "recorded.ckpt", {**state, "solver_config": {"name": "mt3"}}
        ),
        "old_other": mt3_ckpt,
        "mismatched": save(
            tmp_path / "mismatched.ckpt",
            {**state, "state_dict": {**state["state_dict"], first: torch.zeros(3, 1, 7)}},
        ),
    }
    for name, path in cases.items():
        code = generate_main(
            ["--checkpoint", str(path), "--text", "x", "--out", str(tmp_path / "o.wav")]
        )
        line = assert_one_error(code, capsys, str(path))
        assert name != "recorded_other" or "solver=mt3, not solver=musicgen" in line
    assert not (tmp_path / "o.wav").exists()
    with pytest.raises(UserError, match="empty"):
        MusicGen.from_checkpoint(cases["empty"])


def toy_state(**extra: object) -> dict:
    toy = ToyAutoencoder()
    return {"state_dict": toy.state_dict(), "hyper_parameters": dict(toy.hparams), **extra}


def test_resume_checks_the_last_checkpoint(mt3_ckpt: Path, tmp_path: Path) -> None:
    toy = ToyAutoencoder()
    assert resume_checkpoint(None, "toy", toy) is None
    ok = save(tmp_path / "ok.ckpt", toy_state())
    assert resume_checkpoint(ok, "toy", toy) == ok
    recorded = save(tmp_path / "recorded.ckpt", toy_state(solver_config={"name": "toy"}))
    assert resume_checkpoint(recorded, "toy", toy) == recorded
    for path in [*damaged(tmp_path / "bad", ok).values(), mt3_ckpt]:
        with pytest.raises(UserError, match="delete it or pass run.resume=false") as error:
            resume_checkpoint(path, "toy", toy)
        assert "weights_only" not in str(error.value)
    with pytest.raises(UserError, match="trained with another solver"):
        resume_checkpoint(mt3_ckpt, "toy", toy)


@pytest.mark.parametrize("kind", ["garbage", "other_solver"])
def test_train_py_refuses_to_resume_from_a_bad_last_checkpoint(
    kind: str, toy_dataset: Path, tmp_path: Path
) -> None:
    last = tmp_path / "runs" / "r" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    if kind == "garbage":
        last.write_bytes(b"\x00garbage" * 100)
    else:
        save(last, toy_state(solver_config={"name": "mt3"}))
    cmd = [sys.executable, "train.py", f"hydra.searchpath=[file://{TOY_CONF}]", "solver=toy"]
    cmd += [f"dataset.root={toy_dataset}", "logger=csv", "trainer=debug", "run.name=r"]
    cmd += [f"paths.runs_dir={tmp_path / 'runs'}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(last) in line and "run.resume=false" in line
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_messages_tell_damage_from_code(tmp_path: Path) -> None:
    """Random bytes are a damaged file; a pickled function is refused as code; neither message
    passes on torch's advice to load with weights_only=False."""
    from musicgen.checkpoint_io import load_checkpoint

    garbage, code = tmp_path / "garbage.ckpt", tmp_path / "code.ckpt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    torch.save({"state_dict": {}, "x": _RunsCode()}, code)
    for path, words in ((garbage, "not a PyTorch checkpoint"), (code, "could run code")):
        with pytest.raises(UserError, match=words) as caught:
            load_checkpoint(path)
        assert "weights_only" not in str(caught.value)
