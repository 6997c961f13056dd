"""Entry point of the `zsc` console script."""

from __future__ import annotations

import argparse
import sys

from zsc.cli import app, reproduce

COMMAND_MODULES = [*app.STEP_COMMANDS, reproduce]


def build_parser() -> argparse.ArgumentParser:
    return app.build_parser(COMMAND_MODULES)


def _freeze_heap_for_exit() -> None:
    """Keep the interpreter's teardown from running a full garbage collection over every object torch, MLflow and
    pandas made: that took 1.5-13 s after a command's work was done (bench/cli_startup.py). Frozen objects are still
    freed by reference counting, and atexit handlers still run."""
    import gc

    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    code = app.run(COMMAND_MODULES, argv)
    if argv is None:  # the console script, whose process ends now (a test calling main() goes on collecting)
        _freeze_heap_for_exit()
    return code


if __name__ == "__main__":
    sys.exit(main())
