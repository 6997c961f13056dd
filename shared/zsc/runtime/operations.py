"""Long-running operations: background jobs with progress, cancel and a streaming watch.

Jobs run on their own worker threads, never on the RPC threads, so health checks, GetOperation and CancelOperation
stay responsive while a job computes. A per-service cap on concurrent jobs answers RESOURCE_EXHAUSTED when full
instead of slowing every job down, and so does a cap on the jobs one client address starts per hour: every job may
leave MLflow runs and model versions behind, and a fuzzer left a 4 GB store without it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from zsc import errors, tracking
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.runtime.interceptors import CLIENT, status_for

log = logging.getLogger("zsc.operations")
State = common_pb2.OperationMetadata.State
_managers: weakref.WeakSet[OperationManager] = weakref.WeakSet()  # every manager of this process, for running_jobs()
HOUR = 3600.0


class JobContext:
    """What a running job sees: progress reporting and cooperative cancellation. Cores get its bound methods."""

    def __init__(self, record: _Record, manager: OperationManager) -> None:
        self._record = record
        self._manager = manager

    @property
    def name(self) -> str:
        return self._record.name

    def should_stop(self) -> bool:
        return self._record.cancel.is_set()

    def check_cancelled(self) -> None:
        if self.should_stop():
            raise errors.Cancelled(f"operation {self.name} was cancelled")

    def progress(self, done: int, total: int | None = None, message: str | None = None, **metrics: float) -> None:
        self._manager._update(self._record, done=done, total=total, message=message, metrics=metrics)

    def set_mlflow_run(self, run_id: str) -> None:
        self._manager._update(self._record, run_id=run_id)


@dataclass
class _Record:
    name: str
    kind: str
    unit: str
    state: State = State.QUEUED
    done_units: int = 0
    total_units: int = 0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    response: Message | None = None
    error: tuple[int, str] | None = None
    version: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.state in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class OperationManager:
    def __init__(
        self, service: str, max_concurrent: int = 2, retain: int = 1000, max_per_hour: int = 0, window_s: float = HOUR
    ) -> None:
        self.service = service
        self.server_tags: dict[str, str] = {}  # what the server says about itself; its jobs' runs carry them
        self.max_concurrent = max_concurrent
        self.max_per_hour = max_per_hour  # per client address; 0 = no cap
        self._window = window_s
        self._starts: dict[str, deque[float]] = {}  # client -> start times within the window
        self._retain = retain
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._changed = threading.Condition()
        self._threads: set[threading.Thread] = set()
        self._started = 0
        self._closed = False
        _managers.add(self)

    # --- starting and running jobs -------------------------------------------------------------------------------
    def start(
        self, kind: str, job: Callable[[JobContext], Message], *, total: int = 0, unit: str = ""
    ) -> common_pb2.Operation:
        """Queue ``job`` and return its Operation at once; raises ResourceExhausted when the cap is reached."""
        with self._changed:
            if self._closed:
                raise errors.ModelUnavailable(f"{self.service} is shutting down")
            active = sum(not r.done for r in self._records.values())
            if active >= self.max_concurrent:
                raise errors.ResourceExhausted(
                    f"{self.service} already runs {active} operations (the cap is {self.max_concurrent}); retry later"
                )
            self._count_start(CLIENT.get())
            record = _Record(name=f"operations/{self.service}/{uuid.uuid4().hex}", kind=kind, unit=unit)
            record.total_units = total
            self._records[record.name] = record
            self._evict()
            self._started += 1
            # A fresh thread per job, ended with the job, rather than a pool: torch's intra-op threads are an OpenMP
            # team per calling thread, and while another thread's idle team lives, libgomp counts more threads than
            # cores and stops spinning between parallel regions; a job after two concurrent ones ran 1.5x slower on
            # a kept pool thread (bench/job_threads.py).
            # Daemon: a job that ignores its cancel must not keep the process alive; shutdown() waits for it instead.
            thread = threading.Thread(
                target=self._run, args=(record, job), name=f"{self.service}-job-{self._started}", daemon=True
            )
            self._threads.add(thread)
        thread.start()
        return self._snapshot(record)

    def _count_start(self, client: str) -> None:
        """Refuse a start past the client's hourly cap; otherwise record it (under self._changed)."""
        if not self.max_per_hour:
            return
        now = time.monotonic()
        for key in list(self._starts):  # forget clients with no start in the window: the table stays small
            starts = self._starts[key]
            while starts and starts[0] <= now - self._window:
                starts.popleft()
            if not starts:
                del self._starts[key]
        starts = self._starts.setdefault(client, deque())
        if len(starts) >= self.max_per_hour:
            wait = starts[0] + self._window - now
            raise errors.ResourceExhausted(
                f"{client or 'this client'} started {len(starts)} operations on {self.service} within the hour (the "
                f"cap is {self.max_per_hour}, --max-operations-per-hour); retry in {wait:.0f} s"
            )
        starts.append(now)

    def _run(self, record: _Record, job: Callable[[JobContext], Message]) -> None:
        try:
            self._run_job(record, job)
        finally:
            with self._changed:
                self._threads.discard(threading.current_thread())

    def _run_job(self, record: _Record, job: Callable[[JobContext], Message]) -> None:
        ctx = JobContext(record, self)
        self._update(record, state=State.RUNNING)
        try:
            ctx.check_cancelled()
            with tracking.owned_by(self.service, self.server_tags):  # its runs name this server (the startup sweep)
                response = job(ctx)
            ctx.check_cancelled()
        except BaseException as err:
            code, text = status_for(err)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("operation %s failed", record.name)
            state = State.CANCELLED if code == grpc.StatusCode.CANCELLED else State.FAILED
            self._update(record, state=state, error=(code.value[0], text))
        else:
            self._update(record, state=State.SUCCEEDED, response=response)

    def _update(
        self,
        record: _Record,
        *,
        state: State | None = None,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
        metrics: dict[str, float] | None = None,
        run_id: str | None = None,
        response: Message | None = None,
        error: tuple[int, str] | None = None,
    ) -> None:
        """Set the fields given (None leaves one as it is) and wake the watchers."""
        with self._changed:
            if metrics:
                record.metrics.update({k: float(v) for k, v in metrics.items()})
            if state is not None:
                record.state = state
            if done is not None:
                record.done_units = int(done)
            if total is not None:
                record.total_units = int(total)
            if message is not None:
                record.message = message
            if run_id is not None:
                record.run_id = str(run_id)
            if response is not None:
                record.response = response
            if error is not None:
                record.error = error
            record.updated = time.time()
            record.version += 1
            self._changed.notify_all()

    def _evict(self) -> None:
        finished = [name for name, r in self._records.items() if r.done]
        for name in finished[: max(0, len(self._records) - self._retain)]:
            del self._records[name]

    # --- reading, cancelling, watching ---------------------------------------------------------------------------
    def _find(self, name: str) -> _Record:
        record = self._records.get(name)
        if record is None:
            raise errors.NotFound(f"no operation named {name!r} on {self.service}")
        return record

    def _snapshot(self, record: _Record) -> common_pb2.Operation:
        meta = common_pb2.OperationMetadata(
            kind=record.kind,
            state=record.state,
            done_units=record.done_units,
            total_units=record.total_units,
            unit=record.unit,
            message=record.message,
            create_time=_timestamp(record.created),
            update_time=_timestamp(record.updated),
            metrics=record.metrics,
            mlflow_run_id=record.run_id,
        )
        op = common_pb2.Operation(name=record.name, done=record.done, metadata=meta)
        if record.error is not None:
            op.error.code, op.error.message = record.error
        elif record.response is not None:
            packed = any_pb2.Any()
            packed.Pack(record.response)
            op.response.CopyFrom(packed)
        return op

    def get(self, name: str) -> common_pb2.Operation:
        with self._changed:
            return self._snapshot(self._find(name))

    def list(self, kind: str = "", page_size: int = 0, page_token: str = "") -> tuple[list[common_pb2.Operation], str]:
        with self._changed:
            records = [r for r in self._records.values() if not kind or r.kind == kind]
            start = int(page_token) if page_token.isdigit() else 0
            size = page_size if 0 < page_size <= 1000 else 100
            page = records[start : start + size]
            next_token = str(start + size) if start + size < len(records) else ""
            return [self._snapshot(r) for r in page], next_token

    def cancel(self, name: str) -> common_pb2.Operation:
        with self._changed:
            record = self._find(name)
            if not record.done:
                record.cancel.set()
                record.message = "cancelling"
                record.version += 1
                self._changed.notify_all()
            return self._snapshot(record)

    def watch(self, name: str, is_active: Callable[[], bool] = lambda: True) -> Iterator[common_pb2.Operation]:
        """Yield the operation now and after every change, until it is done or the watcher goes away."""
        seen = -1
        while True:
            with self._changed:
                record = self._find(name)
                if record.version == seen:
                    self._changed.wait(timeout=1.0)
                if record.version == seen:
                    if not is_active() or self._closed:
                        return
                    continue
                seen = record.version
                snapshot = self._snapshot(record)
            yield snapshot
            if snapshot.done:
                return

    def shutdown(self, cancel: bool = True, wait: bool = True, timeout: float | None = None) -> bool:
        """Stop taking jobs; cancel running ones so they clean up their partial outputs and end their MLflow runs
        KILLED. With ``wait``, join the job threads for at most ``timeout`` seconds in all (None: until they end).
        Returns True when no job thread is left running."""
        with self._changed:
            self._closed = True
            if cancel:
                for record in self._records.values():
                    record.cancel.set()
            self._changed.notify_all()
            threads = list(self._threads)
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            for thread in threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def running_jobs(self) -> int:
        """Job threads still alive (a cancelled job is alive until its core reaches a cancellation check)."""
        with self._changed:
            return sum(thread.is_alive() for thread in self._threads)


def running_jobs() -> int:
    """Job threads still alive in this process, over all its servers (the CLI's in-process one included)."""
    return sum(manager.running_jobs() for manager in list(_managers))


class OperationsServicer(common_pb2_grpc.OperationsServicer):
    def __init__(self, manager: OperationManager) -> None:
        self.manager = manager

    def GetOperation(self, request, context):
        return self.manager.get(request.name)

    def ListOperations(self, request, context):
        ops, token = self.manager.list(request.kind, request.page_size, request.page_token)
        return common_pb2.ListOperationsResponse(operations=ops, next_page_token=token)

    def CancelOperation(self, request, context):
        return self.manager.cancel(request.name)

    def WatchOperation(self, request, context):
        yield from self.manager.watch(request.name, context.is_active)
