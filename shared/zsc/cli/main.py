"""Entry point of the `zsc` console script."""

from __future__ import annotations

import argparse
import logging
import sys

from zsc.cli import (
    data,
    downstream,
    features,
    generative,
    recovery,
    registry,
    reproduce,
    servers,
    synthesize,
    zeroshot,
)
from zsc.cli.common import run_command
from zsc.runtime.server import quiet_telemetry

COMMAND_MODULES = [servers, zeroshot, synthesize, recovery, generative, features, downstream, registry, data, reproduce]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsc", description="Data-free zero-shot image classification services.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
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


def _freeze_heap_for_exit() -> None:
    """Keep the interpreter's teardown from running a full garbage collection over every object torch, MLflow and
    pandas made: that took 1.5-13 s after a command's work was done (bench/cli_startup.py). Frozen objects are still
    freed by reference counting, and atexit handlers still run."""
    import gc

    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    quiet_telemetry()  # before anything imports MLflow: client commands log and read runs too
    args = build_parser().parse_args(argv)
    _say_who_served()
    code = run_command(args.func, args)
    if argv is None:  # the console script, whose process ends now (a test calling main() goes on collecting)
        _freeze_heap_for_exit()
    return code


if __name__ == "__main__":
    sys.exit(main())
