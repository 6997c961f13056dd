"""The one path from an RPC to a tracked job: an Operation whose body runs inside one MLflow run.

Every long RPC is check -> plan -> ``start_tracked`` -> convert. ``start_tracked`` owns what each handler used to
write out: opening the run (its git commit and owner tags are set once, in ``tracking.Run``), logging the params and
the lineage tags, pointing the Operation at the run, batching metrics, ending the run FINISHED / KILLED / FAILED,
and registering the result. The body receives a :class:`TrackedRun` and returns the result message.

Cancellation has one type, ``zsc.errors.Cancelled``: cores raise it when their ``should_stop`` turns True, the run
ends KILLED and the Operation CANCELLED, with no translation in between.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message

from zsc import tracking
from zsc.common.v1 import common_pb2
from zsc.runtime.operations import JobContext, OperationManager


def lineage_tags(kind: str, profile: str, seed: int | None = None, **extra: Any) -> dict[str, str]:
    """The tags every tracked run carries: what made it (``zsc.kind``), under which profile, from which seed, plus
    the lineage of its inputs (``extra``, keys without the ``zsc.`` prefix; empty values are left out)."""
    tags = {"zsc.kind": kind, "zsc.profile": profile}
    if seed is not None:
        tags["zsc.seed"] = str(seed)
    for key, value in extra.items():
        if value not in (None, ""):
            tags[f"zsc.{key}"] = str(value)
    return tags


@dataclass(frozen=True)
class JobPlan:
    """What one tracked job records before its body runs."""

    kind: str  # the Operation kind, "<package>.<Service>/<Rpc>"
    experiment: str
    run_name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    total: int = 0  # units of progress the Operation reports (0: unknown)
    unit: str = ""


class TrackedRun:
    """A running job's view: progress and cancellation (the Operation) and logging (the MLflow run).

    Metrics logged with ``log_metric`` are kept and sent in batches (every ``flush_every`` values and at the end), so
    a per-epoch curve costs a handful of store calls, not one per point.
    """

    def __init__(self, ctx: JobContext, run: tracking.Run, flush_every: int = 500) -> None:
        self.ctx = ctx
        self.run = run
        self._pending: list[tuple[str, float, int]] = []
        self._flush_every = flush_every

    @property
    def run_id(self) -> str:
        return self.run.id

    def should_stop(self) -> bool:
        return self.ctx.should_stop()

    def check_cancelled(self) -> None:
        self.ctx.check_cancelled()

    def progress(self, done: int, total: int | None = None, message: str | None = None, **metrics: float) -> None:
        self.ctx.progress(done, total, message, **metrics)

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self._pending.append((key, float(value), step))
        if len(self._pending) >= self._flush_every:
            self.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.run.log_metrics(dict(metrics), step)

    def flush(self) -> None:
        by_step: dict[int, dict[str, float]] = {}
        for key, value, step in self._pending:
            by_step.setdefault(step, {})[key] = value
        self._pending.clear()
        for step, metrics in by_step.items():
            self.run.log_metrics(metrics, step)


def start_tracked(
    operations: OperationManager,
    plan: JobPlan,
    body: Callable[[TrackedRun], message.Message],
    *,
    register: Callable[[TrackedRun, message.Message], None] | None = None,
) -> common_pb2.Operation:
    """Start ``body`` as an Operation inside one MLflow run; return the Operation at once.

    ``register`` (optional) runs after the body succeeds and before the run ends FINISHED, so a model version is
    registered only for a finished result and its run holds the registration's tags.
    """

    def job(ctx: JobContext) -> message.Message:
        with tracking.run(plan.experiment, plan.run_name, dict(plan.tags)) as run:
            ctx.set_mlflow_run(run.id)
            run.log_params(dict(plan.params))
            tracked = TrackedRun(ctx, run)
            try:
                result = body(tracked)
                if register is not None:
                    register(tracked, result)
            finally:
                tracked.flush()
            return result

    return operations.start(plan.kind, job, total=plan.total, unit=plan.unit)
