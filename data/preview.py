"""``python -m data.preview DIR --out OUT``: listen to and look at one sample of a prepared dataset.

Writes ``OUT/<key>.wav`` (the mix) and ``OUT/<key>.png`` (its spectrogram on a log-frequency
axis with the sample's notes drawn over it, one colour per instrument), so a person can check
that audio and notes agree. With ``--melody`` it also writes ``OUT/<key>.melody.wav``, the sum of
the sample's vocals and other stems (what MusicGen-Melody's oracle stemmer keeps), and
``OUT/<key>.txt``, its caption: inputs for ``python -m musicgen.generate``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pretty_midi  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from data.decode import SampleSpec  # noqa: E402
from data.shardlist import split_shards  # noqa: E402
from data.shards import STEMS  # noqa: E402
from data.skips import SkipCounter  # noqa: E402
from data.streams import decoded_samples  # noqa: E402
from musicgen.errors import UserError  # noqa: E402
from musicgen.notes import END, IS_DRUM, PITCH, PROGRAM, START, crop_notes  # noqa: E402
from musicgen.paths import inside  # noqa: E402

MELODY_STEMS = ("vocals", "other")


def plot_spectrogram_with_notes(
    audio: np.ndarray, rate: int, notes: np.ndarray, title: str, path: Path
) -> None:
    """Save a log-frequency power spectrogram of mono ``audio`` with ``notes`` drawn as lines."""
    n_fft, hop = 4096, 512
    spec = torch.stft(
        torch.from_numpy(audio), n_fft, hop, window=torch.hann_window(n_fft), return_complex=True
    )
    db = 20 * np.log10(spec.abs().numpy() + 1e-6)
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    times = np.arange(db.shape[1]) * hop / rate
    fig, ax = plt.subplots(figsize=(14, 6), dpi=100)
    ax.pcolormesh(
        times, freqs[1:], db[1:], vmin=db.max() - 80, vmax=db.max(), cmap="magma", shading="auto"
    )
    ax.set_yscale("log")
    ax.set_ylim(30, min(8000, rate / 2))
    colours = plt.get_cmap("tab10")
    labels: dict[tuple[int, int], int] = {}
    for note in notes:
        label = (int(note[PROGRAM]), int(note[IS_DRUM]))
        colour = colours(labels.setdefault(label, len(labels)) % 10)
        if note[IS_DRUM]:
            ax.plot([note[START]], [40], marker="|", markersize=12, color=colour)
        else:
            hz = pretty_midi.note_number_to_hz(note[PITCH])
            ax.plot([note[START], note[END]], [hz, hz], color=colour, linewidth=2, alpha=0.8)
    for (program, drum), index in labels.items():
        name = "drums" if drum else pretty_midi.program_to_instrument_name(program)
        ax.plot([], [], color=colours(index % 10), label=name)
    if labels:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(0, len(audio) / rate)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_preview(sample: dict, out: Path, seconds: float, rate: int, melody: bool) -> None:
    """Write the preview files of one decoded ``sample`` into ``out`` (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    audio = sample["audio"][0, : int(seconds * rate)].numpy()
    notes = crop_notes(sample["notes"].numpy(), 0.0, len(audio) / rate)
    name = sample["key"]
    sf.write(inside(out, f"{name}.wav"), audio, rate)
    plot_spectrogram_with_notes(audio, rate, notes, sample["caption"], inside(out, f"{name}.png"))
    print(f"wrote {out / name}.wav and {out / name}.png: {sample['caption']}")
    if melody:
        keep = [STEMS.index(stem) for stem in MELODY_STEMS]
        stems = sample["stems"][keep, 0, : len(audio)].sum(0).numpy()
        sf.write(inside(out, f"{name}.melody.wav"), stems, rate)
        inside(out, f"{name}.txt").write_text(sample["caption"] + "\n")
        print(f"wrote {out / name}.melody.wav ({' + '.join(MELODY_STEMS)}) and {out / name}.txt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.preview", description=__doc__.splitlines()[0]
    )
    parser.add_argument("root", help="prepared dataset directory (with index.json)")
    parser.add_argument("--out", required=True, help="output folder for the WAV and PNG")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--seconds", type=float, default=12.0, help="preview length (default 12 s)")
    parser.add_argument(
        "--melody", action="store_true", help="also write the vocals+other stems and the caption"
    )
    args = parser.parse_args(argv)
    fields = ("audio", "notes", "caption") + (("stems",) if args.melody else ())
    try:
        shards = split_shards(args.root, args.split)
        spec = SampleSpec(32000, 1, None, fields, "none")
        sample = next(decoded_samples(shards, spec, np.random.default_rng(0), SkipCounter()), None)
        if sample is None:
            raise UserError(f"no readable sample in the {args.split} split of {args.root}")
        write_preview(sample, Path(args.out), args.seconds, spec.sample_rate, args.melody)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
