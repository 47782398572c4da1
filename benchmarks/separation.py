"""Source separation speed on CPU: audio seconds separated per second, ours against Demucs.

    python benchmarks/separation.py [--seconds 20] [--threads 1,2]

Models (random weights, the configs of conf/solver/separator/): the ``spleeter_tiny`` preset of
``experiment=separation_tiny``, Spleeter 4stems and HTDemucs (htdemucs-sized). Each separates
noise at its rate and channel count with :func:`musicgen.separation.apply.separate` (windows of
the model's segment, overlap 0.25). For HTDemucs, ``demucs.apply.apply_model(shifts=0,
split=True)`` on the same network, in the same run, is the reference: ``ratio`` is its
wall-clock time over ours, ``ratio_cpu`` the same in process CPU time (steadier on a busy
machine), and the outputs are compared. Best of ``--repeats`` rounds, alternating which runs
first. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from demucs.apply import apply_model  # noqa: E402

from musicgen.separation import build_separator  # noqa: E402
from musicgen.separation.apply import separate  # noqa: E402

PRESETS = {"tiny": "spleeter_tiny", "spleeter-4stems": "spleeter_4stems", "htdemucs": "htdemucs"}


def separator_config(preset: str) -> dict:
    path = ROOT / "conf" / "solver" / "separator" / f"{preset}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path).module.separator)


def race(fns: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, tuple]:
    """Each function's output and best wall-clock and process CPU seconds over ``repeats``
    rounds, the order reversed every other round (no function always runs first)."""
    best: dict[str, tuple] = {}
    for round_ in range(repeats):
        for name in list(fns)[:: -1 if round_ % 2 else 1]:
            wall, cpu = time.perf_counter(), time.process_time()
            with torch.no_grad():
                out = fns[name]()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            old = best.get(name, (None, float("inf"), float("inf")))
            best[name] = (out, min(wall, old[1]), min(cpu, old[2]))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="audio length (default 20 s)")
    parser.add_argument("--threads", default="1,2", help="torch thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs (default 2)")
    parser.add_argument(
        "--models", default=",".join(PRESETS), help=f"subset of {','.join(PRESETS)}"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        model = build_separator(separator_config(PRESETS[name])).eval()
        rate = model.sample_rate
        mix = 0.1 * torch.randn(1, model.audio_channels, int(args.seconds * rate))
        seconds = mix.shape[-1] / rate
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            separate(model, mix[..., : rate // 2], rate)  # warm-up
            fns = {"ours": lambda: separate(model, mix, rate)}  # noqa: B023
            if name == "htdemucs":
                fns["apply_model"] = lambda: apply_model(model.model, mix, shifts=0, overlap=0.25)  # noqa: B023
            times = race(fns, args.repeats)
            ours, wall, cpu = times["ours"]
            row = {
                "model": name,
                "threads": threads,
                "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "audio_s": round(seconds, 2),
                "ours_x_realtime": round(seconds / wall, 2),
                "apply_model_x_realtime": None,
                "ratio": None,
                "ratio_cpu": None,
                "max_abs_diff": None,
            }
            if "apply_model" in times:
                reference, ref_wall, ref_cpu = times["apply_model"]
                row["apply_model_x_realtime"] = round(seconds / ref_wall, 2)
                row["ratio"] = round(ref_wall / wall, 2)
                row["ratio_cpu"] = round(ref_cpu / cpu, 2)
                row["max_abs_diff"] = float((reference - ours).abs().max())
            rows.append(row)
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    print(json.dumps({"benchmark": "separation", "seconds": args.seconds, "rows": rows}))


if __name__ == "__main__":
    main()
