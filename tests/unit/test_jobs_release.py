"""zsc.runtime.jobs.start_tracked's ``release``: what an RPC reserved for a job is freed whatever becomes of it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from zsc.common.v1 import common_pb2
from zsc.errors import ResourceExhausted
from zsc.runtime import jobs
from zsc.runtime.jobs import JobPlan, start_tracked
from zsc.runtime.operations import OperationManager

PLAN = JobPlan("zsc.test.v1.Test/Run", "zsc-test", "release")


def test_release_runs_when_the_run_cannot_open(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def no_store(*args: object) -> Iterator[None]:
        raise OSError("the tracking store is down")
        yield

    monkeypatch.setattr(jobs.tracking, "run", no_store)
    operations = OperationManager("test")
    released: list[bool] = []
    op = start_tracked(operations, PLAN, lambda run: common_pb2.Operation(), release=lambda: released.append(True))
    assert operations.shutdown(cancel=False, timeout=30)
    assert released == [True] and operations.get(op.name).HasField("error")


def test_release_runs_at_once_when_the_operation_cannot_start() -> None:
    operations = OperationManager("test", max_concurrent=0)
    released: list[bool] = []
    with pytest.raises(ResourceExhausted):
        start_tracked(operations, PLAN, lambda run: common_pb2.Operation(), release=lambda: released.append(True))
    assert released == [True]
