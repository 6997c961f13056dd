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


def save_evaluation(
    class_names: list[str],
    per_class: list[float],
    confusion: list[list[int]],
    metrics: dict[str, float],
    metrics_out: Path | None,
    plots_dir: Path | None,
) -> None:
    """Write DVC-friendly outputs: a metrics JSON, per-class accuracy CSV and a per-sample (actual, predicted) CSV for
    DVC's confusion template. Files are written atomically, so an interrupted stage leaves no partial output."""
    import csv
    import io
    import json

    from zsc.io import atomic_write_bytes

    if metrics_out is not None:
        payload = {**metrics, "per_class_accuracy": dict(zip(class_names, per_class, strict=True))}
        atomic_write_bytes(metrics_out, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
    if plots_dir is not None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["class", "accuracy"])
        writer.writerows([name, f"{acc:.6f}"] for name, acc in zip(class_names, per_class, strict=True))
        atomic_write_bytes(plots_dir / "per_class_accuracy.csv", buf.getvalue().encode())
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["actual", "predicted"])
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                writer.writerows([[class_names[i], class_names[j]]] * int(count))
        atomic_write_bytes(plots_dir / "confusion.csv", buf.getvalue().encode())
