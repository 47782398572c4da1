"""``python -m data.chroma_cache``: precompute the stemmed melody chroma of prepared shards.

Reads every track of the shards whole through the pipeline's decoding (bad samples are skipped
and counted), at the codec's rate and channels, and writes its chromagram with
:func:`musicgen.conditioners.chroma_cache.write_cache` for ``solver.module.chroma_cache``::

    python -m data.chroma_cache --shards "DIR/train-*.tar" --stemmer demucs --demucs-repo MODELS --out CACHE
"""

from __future__ import annotations

import argparse
import glob
import sys

import numpy as np

from data.decode import SampleSpec
from data.skips import SkipCounter
from data.streams import decoded_samples
from musicgen.conditioners.chroma_cache import cache_dir, write_cache
from musicgen.conditioners.melody import MelodyConditioner
from musicgen.conditioners.stemmers import build_stemmer
from musicgen.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.chroma_cache", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--shards", nargs="+", required=True, help="shard paths or glob patterns")
    parser.add_argument("--out", required=True, help="cache root (one folder per stemmer)")
    parser.add_argument(
        "--stemmer", default="demucs", choices=["demucs", "separation", "oracle", "none"]
    )
    parser.add_argument("--demucs-name", default="htdemucs")
    parser.add_argument("--demucs-repo", default=None, help="local folder with the Demucs model")
    parser.add_argument(
        "--separator",
        default=None,
        help="separation stemmer: a .ckpt of solver=separation, spleeter:4stems or a Demucs name",
    )
    parser.add_argument("--keep", nargs="+", default=["vocals", "other"], help="stems to keep")
    parser.add_argument("--sample-rate", type=int, default=32000, help="the codec's rate")
    parser.add_argument("--channels", type=int, default=1, help="the codec's channels")
    parser.add_argument("--n-chroma", type=int, default=12)
    parser.add_argument("--winlen", type=int, default=2**14)
    parser.add_argument("--hop", type=int, default=2**12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="recompute existing files")
    args = parser.parse_args(argv)
    skips = SkipCounter()
    try:
        shards = sorted({p for pattern in args.shards for p in glob.glob(pattern)})
        if not shards:
            raise UserError(f"no shard matches {args.shards}: check the paths")
        options: dict = {"keep": args.keep} if args.stemmer != "none" else {}
        if args.stemmer == "demucs":
            options |= {"name": args.demucs_name, "repo": args.demucs_repo}
        if args.stemmer == "separation":
            options |= {"checkpoint": args.separator}
        melody = MelodyConditioner(
            1,
            args.sample_rate,
            build_stemmer(args.stemmer, **options),
            n_chroma=args.n_chroma,
            winlen=args.winlen,
            hop=args.hop,
        ).to(args.device)
        fields = ("audio", "stems") if args.stemmer == "oracle" else ("audio",)
        spec = SampleSpec(args.sample_rate, args.channels, None, fields, "none")
        samples = decoded_samples(shards, spec, np.random.default_rng(0), skips)
        tracks = ((s["key"], s["audio"], s.get("stems")) for s in samples)
        written, kept = write_cache(tracks, melody, args.out, args.channels, args.overwrite)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    folder = cache_dir(args.out, melody.stemmer.tag)
    print(
        f"{written} chroma written, {kept} already there, in {folder} ({len(shards)} shards; "
        f"skipped: {skips.summary()})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
