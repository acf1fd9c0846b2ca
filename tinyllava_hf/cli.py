"""The `tinyllava-hf` command line: one subcommand family per module, each exposing `register(subparsers)`.

Usage:
    tinyllava-hf --help
    tinyllava-hf <subcommand> --help
"""

import argparse
import importlib
import sys

from . import __version__

# Modules that contribute subcommands. Each defines `register(subparsers)`, adding parsers whose `func` default takes
# the parsed arguments and returns an exit code.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "tinyllava_hf.train.cli",
    "tinyllava_hf.convert.cli",
    "tinyllava_hf.eval.cli",
    "tinyllava_hf.demo.cli",
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyllava-hf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tinyllava-hf {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<subcommand>")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
