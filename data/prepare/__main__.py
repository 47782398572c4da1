"""Command line: ``python -m data.prepare <dataset> --out DIR [options]``."""

from __future__ import annotations

import argparse
import importlib
import sys

from data.prepare import PREPARERS
from data.shards import add_sharding_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__)
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, module_name in PREPARERS.items():
        module = importlib.import_module(module_name)
        preparer = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(preparer)
        add_sharding_arguments(preparer)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(PREPARERS[args.dataset])
    try:
        module.run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
