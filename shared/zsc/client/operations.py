"""Following an Operation to its end: progress callbacks, Ctrl-C cancels it on the server, one error type per way a
call ends badly; and the Operations service's own RPCs (get, list, cancel) as plain Python."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.runtime import client

log = logging.getLogger("zsc.client")
Progress = Callable[[int, int, str], None]  # (done units, total units or 0 when unknown, message)
CANCEL_WAIT_SECONDS = 30.0  # how long Ctrl-C waits for a cancelled job to stop (results flushed, MLflow run KILLED)
OperationError = client.OperationError  # a finished operation that failed or was cancelled


class ClientError(Exception):
    """A failure the client itself detects (no replica left, an unreadable local input): one line."""


class Interrupted(ClientError):
    """Ctrl-C while following an operation, after it was cancelled on the server; the message says how it ended."""


@dataclass(frozen=True)
class OperationInfo:
    """An operation's state as plain values (its result stays on the server until a typed call unpacks it)."""

    name: str
    kind: str
    state: str  # queued, running, succeeded, failed, cancelled
    done: bool
    done_units: int
    total_units: int
    unit: str
    message: str
    mlflow_run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


def info(op: common_pb2.Operation) -> OperationInfo:
    meta = op.metadata
    return OperationInfo(
        name=op.name,
        kind=meta.kind,
        state=common_pb2.OperationMetadata.State.Name(meta.state).lower(),
        done=op.done,
        done_units=meta.done_units,
        total_units=meta.total_units,
        unit=meta.unit,
        message=meta.message,
        mlflow_run_id=meta.mlflow_run_id,
        metrics=dict(meta.metrics),
        error=op.error.message if op.HasField("error") else "",
    )


def progress_message(meta: common_pb2.OperationMetadata) -> str:
    """The job's own message, else its first few live metrics (``loss=0.1234``)."""
    if meta.message:
        return meta.message
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(meta.metrics.items())[:4])


def follow(channel: grpc.Channel, op: common_pb2.Operation, progress: Progress | None = None) -> common_pb2.Operation:
    """Follow ``op`` to its end (WatchOperation), telling ``progress`` each update; raise OperationError if it did
    not succeed, and Interrupted after Ctrl-C (the operation is cancelled on the server first)."""

    def update(current: common_pb2.Operation) -> None:
        if progress is not None:
            meta = current.metadata
            progress(meta.done_units, meta.total_units, progress_message(meta))

    update(op)
    try:
        return client.watch(channel, op, update)
    except KeyboardInterrupt:
        raise Interrupted(cancel_and_wait(channel, op.name)) from None


def cancel_and_wait(channel: grpc.Channel, name: str, wait: float = CANCEL_WAIT_SECONDS) -> str:
    """Cancel operation ``name`` and wait up to ``wait`` seconds for its job to stop, so that it flushes the results
    it has and ends its MLflow run KILLED before this process goes; a second Ctrl-C stops waiting. Returns one line
    saying how the operation ended."""
    stub = common_pb2_grpc.OperationsStub(channel)
    log.warning("cancelling %s: waiting up to %.0f s for it to stop (Ctrl-C again: leave now)", name, wait)
    try:
        last = stub.CancelOperation(common_pb2.CancelOperationRequest(name=name), timeout=10)
        if not last.done:
            for last in stub.WatchOperation(common_pb2.WatchOperationRequest(name=name), timeout=wait):
                if last.done:
                    break
    except KeyboardInterrupt:
        return f"left {name} while it was stopping"
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"{name} did not stop within {wait:.0f} s of its cancel"
        return f"could not cancel {name}: {err.code().name}: {err.details()}"
    meta = last.metadata
    state = common_pb2.OperationMetadata.State.Name(meta.state).lower()
    done = f" after {meta.done_units} of {meta.total_units} {meta.unit}".rstrip() if meta.total_units else ""
    return f"interrupted: {name} {state}{done}"


# --- the Operations service ----------------------------------------------------------------------------------------
def get_operation(channel: grpc.Channel, name: str) -> OperationInfo:
    stub = common_pb2_grpc.OperationsStub(channel)
    return info(stub.GetOperation(common_pb2.GetOperationRequest(name=name)))


def list_operations(channel: grpc.Channel, kind: str = "") -> list[OperationInfo]:
    """Every operation the server keeps (of ``kind``, when given), following the pages."""
    stub = common_pb2_grpc.OperationsStub(channel)
    found, token = [], ""
    while True:
        page = stub.ListOperations(common_pb2.ListOperationsRequest(kind=kind, page_token=token))
        found += [info(op) for op in page.operations]
        token = page.next_page_token
        if not token:
            return found


def cancel_operation(channel: grpc.Channel, name: str) -> OperationInfo:
    """Ask the server to cancel ``name`` and return at once (``cancel_and_wait`` also waits for it to stop)."""
    stub = common_pb2_grpc.OperationsStub(channel)
    return info(stub.CancelOperation(common_pb2.CancelOperationRequest(name=name)))


def watch_operation(channel: grpc.Channel, name: str, progress: Progress | None = None) -> OperationInfo:
    """Follow operation ``name`` (started elsewhere) to its end; its state as it ended."""
    stub = common_pb2_grpc.OperationsStub(channel)
    return info(follow(channel, stub.GetOperation(common_pb2.GetOperationRequest(name=name)), progress))
