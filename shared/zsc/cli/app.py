"""The zsc command line as a function of its command modules: the parser they register into and one run of it.

`zsc.cli.main` (the console script) is the step commands plus `reproduce`; `zsc reproduce` runs its recipe's steps
through the step commands here, so neither of the two imports the other (a recipe step is never a recipe).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from zsc.cli import data, downstream, features, generative, recovery, registry, servers, synthesize, zeroshot
from zsc.cli.common import run_command
from zsc.runtime.server import quiet_telemetry

# Each module has register(sub), which adds its subcommands with set_defaults(func=...).
STEP_COMMANDS: list[ModuleType] = [
    servers,
    zeroshot,
    synthesize,
    recovery,
    generative,
    features,
    downstream,
    registry,
    data,
]


def build_parser(modules: Sequence[ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsc", description="Data-free zero-shot image classification services.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules:
        module.register(sub)
    return parser


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it is swapped when main() runs under a test's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _say_who_served() -> None:
    """Client commands print one stderr line naming the server that answered (``zsc.client`` at INFO) and nothing
    else of the logging tree; `zsc serve` configures the rest for itself."""
    log = logging.getLogger("zsc.client")
    if not log.handlers:  # main() may run several times in one process (tests)
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("zsc: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run(modules: Sequence[ModuleType], argv: list[str] | None) -> int:
    """Parse ``argv`` (None: sys.argv) against ``modules``' commands and run the one named; its exit code."""
    quiet_telemetry()  # before anything imports MLflow: client commands log and read runs too
    args = build_parser(modules).parse_args(argv)
    _say_who_served()
    return run_command(args.func, args)
