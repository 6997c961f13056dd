"""The one path from an RPC to a tracked job: an Operation whose body runs inside one MLflow run.

Every long RPC is check -> plan -> ``start_tracked`` -> convert. ``start_tracked`` owns what each handler used to
write out: opening the run (its git commit and owner tags are set once, in ``tracking.Run``), logging the params and
the lineage tags, pointing the Operation at the run, batching metrics, ending the run FINISHED / KILLED / FAILED,
and registering the result (``TrackedRun.register_folder``, tagged by ``version_tags``). The body receives a
:class:`TrackedRun` and returns the result message.

Cancellation has one type, ``zsc.errors.Cancelled``: cores raise it when their ``should_stop`` turns True, the run
ends KILLED and the Operation CANCELLED, with no translation in between.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import message

from zsc import registry, tracking
from zsc.common.v1 import common_pb2
from zsc.runtime.operations import JobContext, OperationManager


def version_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The tags a registered model version carries: its run's lineage tags and the git commit (which
    ``tracking.Run`` sets on the run itself, so lineage_tags leaves it out)."""
    return {"zsc.git_commit": tracking.git_commit(), **tags}


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

    Metrics logged with ``log_metric`` are kept and sent in batches (every ``flush_every`` values, every
    ``flush_after_s`` seconds and at the end), so a per-epoch curve costs a handful of store calls, not one per point.
    """

    flush_after_s = 2.0

    def __init__(self, ctx: JobContext, run: tracking.Run, flush_every: int = 500) -> None:
        self.ctx = ctx
        self.run = run
        self._pending: list[tuple[str, float, int]] = []
        self._flush_every = flush_every
        self._last_flush = time.monotonic()

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
        # by count, and by time so that the MLflow view of a long run lags by seconds at most
        if len(self._pending) >= self._flush_every or time.monotonic() - self._last_flush >= self.flush_after_s:
            self.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.run.log_metrics(dict(metrics), step)

    def register_folder(
        self, write: Callable[[Path], None], artifact: str, name: str, tags: Mapping[str, str]
    ) -> registry.RegisteredVersion:
        """The one way a job registers a model folder: ``write`` fills a scratch folder, which is logged under
        ``artifact`` and registered as a new version of ``name`` with the run's lineage (``version_tags``). A job
        cancelled while writing registers nothing."""
        with tempfile.TemporaryDirectory(prefix=f"zsc-{artifact}-") as tmp:
            write(Path(tmp))
            self.check_cancelled()
            return registry.register_folder(self.run, Path(tmp), artifact, name, version_tags(tags))

    def flush(self) -> None:
        """Send the kept values now (``tracking.Run.log_points``: a batch per store call, not one per step)."""
        points, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        self.run.log_points(points)


def start_tracked(
    operations: OperationManager,
    plan: JobPlan,
    body: Callable[[TrackedRun], message.Message],
    *,
    release: Callable[[], None] | None = None,
) -> common_pb2.Operation:
    """Start ``body`` as an Operation inside one MLflow run; return the Operation at once.

    ``release`` (optional) frees what the RPC reserved for the job (an output directory, a slot): it runs once the
    job has ended, whatever the outcome and even when the run could not open, or at once when the Operation cannot
    start.
    """

    def job(ctx: JobContext) -> message.Message:
        try:
            with tracking.run(plan.experiment, plan.run_name, dict(plan.tags)) as run:
                ctx.set_mlflow_run(run.id)
                run.log_params(dict(plan.params))
                tracked = TrackedRun(ctx, run)
                try:
                    result = body(tracked)
                finally:
                    tracked.flush()
                return result
        finally:
            if release is not None:
                release()

    try:
        return operations.start(plan.kind, job, total=plan.total, unit=plan.unit)
    except BaseException:
        if release is not None:
            release()
        raise
