"""Entry point of the `zsc` console script."""

from __future__ import annotations

import argparse
import sys

from zsc.cli import data, downstream, features, generative, recovery, registry, servers, synthesize, zeroshot
from zsc.cli.common import run_command

COMMAND_MODULES = [servers, zeroshot, synthesize, recovery, generative, features, downstream, registry, data]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsc", description="Data-free zero-shot image classification services.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
