"""Plumbing shared by the client commands: service channels, progress bars from WatchOperation, one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import grpc

from zsc.common.v1 import common_pb2
from zsc.runtime import client


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def add_client_args(parser: argparse.ArgumentParser, service: str) -> None:
    parser.add_argument(
        "--address",
        help=f"host:port of a running {service} service (default: $ZSC_{service.upper()}_ADDRESS; "
        "with neither, zsc starts one on an ephemeral loopback port for this command)",
    )
    parser.add_argument("--profile", default="tiny", help="model profile for a service zsc starts itself")


def open_channel(args: argparse.Namespace, service: str, paths: list[str | Path] = ()):
    """A channel to the service; an ephemeral server gets the directories this command names as its data roots."""
    roots = [Path.cwd()]
    for p in paths:
        if p:
            path = Path(p).expanduser().resolve()
            roots.append(path if path.is_dir() else path.parent)
    return client.service_channel(service, args.address, profile=args.profile, data_roots=roots)


def follow(channel: grpc.Channel, op: common_pb2.Operation, description: str) -> common_pb2.Operation:
    """Watch an operation with a tqdm progress bar; Ctrl-C cancels it on the server."""
    from tqdm import tqdm

    bar = tqdm(
        total=op.metadata.total_units or None,
        desc=description,
        unit=op.metadata.unit or "it",
        disable=None,
        dynamic_ncols=True,
        file=sys.stderr,
    )

    def update(current: common_pb2.Operation) -> None:
        meta = current.metadata
        if meta.total_units and bar.total != meta.total_units:
            bar.total = meta.total_units
        bar.n = meta.done_units
        if meta.metrics:
            bar.set_postfix({k: f"{v:.4g}" for k, v in sorted(meta.metrics.items())[:4]}, refresh=False)
        bar.refresh()

    try:
        return client.watch(channel, op, update)
    except KeyboardInterrupt:
        from zsc.common.v1 import common_pb2_grpc

        common_pb2_grpc.OperationsStub(channel).CancelOperation(common_pb2.CancelOperationRequest(name=op.name))
        raise CommandError(f"cancelled {op.name}") from None
    finally:
        bar.close()


def run_command(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Turn every expected failure into one line on stderr and exit code 1."""
    from zsc.errors import ZscError

    try:
        return fn(args)
    except grpc.RpcError as err:
        print(f"zsc: {err.code().name}: {err.details()}", file=sys.stderr)
    except client.OperationError as err:
        print(f"zsc: {err}", file=sys.stderr)
    except (CommandError, ZscError, TimeoutError, FileNotFoundError, ValueError) as err:
        print(f"zsc: {err}", file=sys.stderr)
    return 1


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
