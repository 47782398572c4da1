"""Sample keys are made safe where they come in, and writers keep their files inside their folder
(issue 14, items 5 and 6)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch

from data.chroma_cache import main as chroma_cache_main
from data.tar_reader import iter_tar_samples, safe_key
from musicgen.conditioners.chroma_cache import write_cache
from musicgen.conditioners.melody import MelodyConditioner
from musicgen.conditioners.stemmers import build_stemmer
from musicgen.errors import UserError
from musicgen.paths import inside
from tests.fixtures.toy_shards import toy_sample

REPO = Path(__file__).resolve().parents[1]


def write_tar(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    """A shard as ``tar`` would write it: members ``<name>.<ext>``, names taken as given."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, members in samples.items():
            for ext, data in sorted(members.items()):
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_safe_key_flattens_folders_reversibly_and_rejects_escapes() -> None:
    assert safe_key("plain") == "plain"
    assert safe_key("album/x") == "album%2Fx"
    assert safe_key("./a//b/./c") == "a%2Fb%2Fc"
    assert unquote(safe_key("50%/a%2Fb")) == "50%/a%2Fb"
    for bad in ("../evil", "a/../../evil", "/abs/evil", "a\0b", "", "./"):
        with pytest.raises(ValueError):
            safe_key(bad)


def test_reader_skips_unsafe_keys_once_per_sample(tmp_path: Path) -> None:
    members = {"flac": b"x", "json": b"{}"}
    shard = write_tar(
        tmp_path / "s.tar",
        {"album/x": members, "../evil": members, "/abs/evil": members, "ok": members},
    )
    errors: list[tuple] = []
    keys = [s["__key__"] for s in iter_tar_samples(str(shard), lambda *e: errors.append(e))]
    assert keys == ["album%2Fx", "ok"]
    assert [(reason, key) for reason, key, _ in errors] == [
        ("unsafe_key", "'../evil'"),
        ("unsafe_key", "'/abs/evil'"),
    ]


def test_inside_refuses_paths_out_of_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert inside(out, "a%2Fb.npy") == out.resolve() / "a%2Fb.npy"
    (out / "link.npy").symlink_to(tmp_path / "elsewhere.npy")
    for bad in ("../evil.npy", str(tmp_path / "abs.npy"), "link.npy", "a\0.npy", "."):
        with pytest.raises(UserError, match="refusing to write"):
            inside(out, bad)


def melody() -> MelodyConditioner:
    return MelodyConditioner(1, 16000, build_stemmer("none"), winlen=2048, hop=512)


def test_write_cache_refuses_keys_that_leave_its_folder(tmp_path: Path) -> None:
    track = ("../evil", torch.randn(1, 16000) * 0.1, None)
    with pytest.raises(UserError, match="outside"):
        write_cache([track], melody(), tmp_path / "out")
    assert not list(tmp_path.glob("*.npy"))


def test_chroma_cache_writes_nothing_outside_out(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    members, _ = toy_sample(0)
    outside = tmp_path / "abs" / "evil"
    shard = write_tar(
        tmp_path / "train-000000.tar",
        {"../evil": members, str(outside): members, "album/good": members},
    )
    out = tmp_path / "deep" / "out"
    args = ["--shards", str(shard), "--out", str(out), "--stemmer", "none"]
    args += ["--sample-rate", "16000", "--winlen", "2048", "--hop", "512"]
    for overwrite in ([], ["--overwrite"]):
        assert chroma_cache_main(args + overwrite) == 0
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.npy"))
    assert written == [Path("deep/out/none/album%2Fgood.npy")]
    assert "unsafe_key=2" in capsys.readouterr().out


def write_folder_dataset(root: Path) -> Path:
    """A dataset whose shards were made by ``tar`` of a folder: keys ``album/<name>``."""
    root.mkdir()
    index = {}
    for split, count in (("train", 2), ("valid", 1), ("test", 1)):
        samples = {f"./album/{split}-{i}": toy_sample(i)[0] for i in range(count)}
        write_tar(root / f"{split}-000000.tar", samples)
        index[split] = {"shards": [f"{split}-000000.tar"], "num_samples": count}
    (root / "index.json").write_text(json.dumps({"splits": index}))
    return root


def test_mt3_trains_through_validation_with_folder_keys(tmp_path: Path) -> None:
    data = write_folder_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    overrides = [
        "experiment=mt3_tiny",
        f"dataset.root={data}",
        "logger=csv",
        f"paths.runs_dir={runs}",
        "trainer.max_steps=2",
        "loader.train_batches_per_epoch=2",
        "loader.batch_size=2",
        "loader.num_workers=0",
        "loader.eval_batch_size=1",
        "trainer.limit_val_batches=1",
        "solver.module.max_decode_length=16",
    ]
    result = subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = runs.iterdir()
    media = sorted(p.name for p in run_dir.rglob("media/*"))
    assert media == ["step0000002-album%2Fvalid-0.mid", "step0000002-album%2Fvalid-0.png"]
