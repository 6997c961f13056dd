"""MLflow tracking: a local sqlite store under mlflow/ by default, explicit run objects safe to use from job threads.

A team points ``MLFLOW_TRACKING_URI`` at an MLflow server and nothing else changes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from zsc.errors import Cancelled

log = logging.getLogger("zsc.tracking")
_setup_lock = threading.Lock()


def mlflow_dir() -> Path:
    return Path(os.environ.get("ZSC_MLFLOW_DIR", "mlflow")).resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{mlflow_dir() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_root() -> str:
    return (mlflow_dir() / "artifacts").as_uri()


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def client():
    """An MlflowClient on zsc's tracking URI (the store is created on first use).

    zsc never calls ``mlflow.set_tracking_uri``: it writes MLFLOW_TRACKING_URI into the environment, which would leak
    into every child process and override ZSC_MLFLOW_DIR."""
    from mlflow.tracking import MlflowClient


    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(name: str) -> str:
    with _setup_lock:
        c = client()
        exp = c.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        # The embedded store keeps artifacts beside it under mlflow/; a tracking server decides for itself.
        location = artifact_root() if tracking_uri() == default_tracking_uri() else None
        return c.create_experiment(name, artifact_location=location)


class Run:
    """One MLflow run driven through the client API (the fluent API's active-run stack is not job-thread safe)."""

    def __init__(self, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> None:
        self.client = client()
        base_tags = {"zsc.git_commit": git_commit()}
        base_tags.update(tags or {})
        run = self.client.create_run(experiment_id(experiment), run_name=run_name, tags=base_tags)
        self.id = run.info.run_id
        self.artifact_uri = run.info.artifact_uri

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.id, metrics=items[i : i + 500])

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.id, k, str(v))

    def log_figure(self, figure: Any, path: str) -> None:
        """Log and close: pyplot keeps every open figure alive, which a long-running service would leak."""
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(self.id, figure, path)
        finally:
            plt.close(figure)

    def log_dict(self, data: Any, path: str) -> None:
        self.client.log_dict(self.id, data, path)

    def log_table(self, data: dict[str, list[Any]], path: str) -> None:
        self.client.log_table(self.id, data=data, artifact_file=path)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.id, str(local_path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.id, status=status)


@contextmanager
def run(experiment: str, run_name: str, tags: dict[str, str] | None = None):
    """A Run that ends FINISHED, KILLED (cancelled) or FAILED (any other error), never RUNNING."""
    r = Run(experiment, run_name, tags)
    try:
        yield r
    except Cancelled:
        r.end("KILLED")
        raise
    except BaseException:
        r.end("FAILED")
        raise
    else:
        r.end("FINISHED")
