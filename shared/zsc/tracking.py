"""MLflow tracking: a local sqlite store under mlflow/ by default, explicit run objects safe to use from job threads.

A team points ``MLFLOW_TRACKING_URI`` at an MLflow server and nothing else changes.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from zsc.errors import Cancelled, InvalidArgument

log = logging.getLogger("zsc.tracking")
_setup_lock = threading.Lock()
# MLflow's first import is not thread-safe (its circular imports fail half-way when two threads race), and a server
# may first touch it from its startup sweep and a job at once.
_import_lock = threading.Lock()
# The service whose job thread is running now; its runs carry the owner tags the startup sweep reads.
# (service, the tags its server says about itself) of the job running on this thread; None outside jobs.
_owner: contextvars.ContextVar[tuple[str, dict[str, str]] | None] = contextvars.ContextVar(
    "zsc_tracking_owner", default=None
)
OWNER_SERVICE_TAG = "zsc.server.service"
OWNER_HOST_TAG = "zsc.server.host"
OWNER_PROCESS_TAG = "zsc.server.process"  # "<pid>:<start time>": a reused pid does not look alive
ENDED_BY_TAG = "zsc.ended_by"


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


def _quiet_mlflow() -> None:
    """Users see results, not plumbing: MLflow announces store creation and migrations at INFO, and draws a tqdm bar
    on stderr for every artifact copy, even inside a server (zsc reports its own progress). Done where zsc creates
    its client, not at import; a user who sets MLFLOW_LOGGING_LEVEL or MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR keeps
    that choice, and child processes see the same one."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # read on every artifact copy
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # MLflow read it when it was imported: set its logger instead
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def client():
    """An MlflowClient on zsc's tracking URI (the store is created on first use).

    zsc never calls ``mlflow.set_tracking_uri``: it writes MLFLOW_TRACKING_URI into the environment, which would leak
    into every child process and override ZSC_MLFLOW_DIR."""
    with _import_lock:
        from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# MLflow's own check allows 500 characters, but its SQL stores hold experiments.name in a VARCHAR(256).
MAX_EXPERIMENT_CHARS = 256


def experiment_name(name: str, default: str) -> str:
    """The MLflow experiment a request names (``default`` when empty), checked at request time against what MLflow
    and its SQL stores accept, so a bad name fails the call, not the job it would start."""
    if not name:
        return default
    if len(name) > MAX_EXPERIMENT_CHARS:
        raise InvalidArgument(f"experiment name is {len(name)} characters long; the limit is {MAX_EXPERIMENT_CHARS}")
    if not name.isprintable() or name != name.strip():
        raise InvalidArgument(f"experiment name {name[:40]!r} has control characters or surrounding whitespace")
    return name


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
        base_tags = {"zsc.git_commit": git_commit(), **owner_tags()}
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
        self.log_points([(k, float(v), step or 0) for k, v in metrics.items()])

    def log_points(self, points: Sequence[tuple[str, float, int]]) -> None:
        """(key, value, step) points in as few store calls as MLflow's batch limit allows (against the embedded
        SQLite store one write costs ~0.1 s, more than an epoch of a small model)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, value, now, step) for key, value, step in points]
        for i in range(0, len(items), 500):  # MLflow's batch limit is 1000 metrics
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


def metric_keys(prefix: str, names: Sequence[str]) -> list[str]:
    """``prefix/<name>`` for each name, reduced to the characters MLflow accepts in a key and made unique (class
    names come from requests: "a/../b" or "" must not fail a run at its end)."""
    keys: list[str] = []
    for i, name in enumerate(names):
        safe = re.sub(r"[^\w.\- ]+", "_", name)[:200].strip(" .") or f"class_{i}"
        key = f"{prefix}/{safe}"
        keys.append(key if key not in keys else f"{key}_{i}")
    return keys


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


# --- runs left RUNNING by a dead server ------------------------------------------------------------------------------
def process_identity(pid: int) -> str | None:
    """``"<pid>:<start time>"`` of a live process (``"<pid>"`` where /proc is missing), None when it is gone.

    The start time tells a restarted process that reuses an old pid from the one that created a run."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        # The command name (field 2) may hold spaces and parentheses: fields are counted after its last ")".
        return f"{pid}:{stat.read_text().rsplit(')', 1)[1].split()[19]}"
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return str(pid)


def owner_tags() -> dict[str, str]:
    """Tags naming the server process that owns a run created in one of its jobs, and what that server runs
    (profile, model ids, address: the ``server_tags`` of ``owned_by``); empty outside jobs."""
    owner = _owner.get()
    if owner is None:
        return {}
    service, server_tags = owner
    return {
        **server_tags,
        OWNER_SERVICE_TAG: service,
        OWNER_HOST_TAG: socket.gethostname(),
        OWNER_PROCESS_TAG: process_identity(os.getpid()) or str(os.getpid()),
    }


@contextmanager
def owned_by(service: str, server_tags: dict[str, str] | None = None) -> Iterator[None]:
    """Runs created in this block (on this thread) are tagged as owned by ``service`` in this process, with the
    tags of the server that runs the job (one process may hold several servers of one service, e.g. in tests)."""
    token = _owner.set((service, dict(server_tags or {})))
    try:
        yield
    finally:
        _owner.reset(token)


def _store_is_empty() -> bool:
    """True for the embedded store before its first run: there is nothing to sweep, and nothing to create."""
    uri = tracking_uri()
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def fail_orphaned_runs(service: str) -> list[str]:
    """End as FAILED the runs still RUNNING that a dead process of ``service`` on this host created; returns their ids.

    A server that is SIGKILLed (or loses power) cannot end its runs, so the next server of the same service on the
    same host ends them at startup. Runs of live processes, of other hosts and of other services are left alone."""
    if _store_is_empty():
        return []
    c = client()  # first: it imports MLflow under the import lock
    from mlflow.entities import ViewType

    host = socket.gethostname()
    query = (
        f"attributes.status = 'RUNNING' and tags.`{OWNER_SERVICE_TAG}` = '{service}' "
        f"and tags.`{OWNER_HOST_TAG}` = '{host}'"
    )
    experiments: list[str] = []
    token = None
    while True:
        page = c.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
        experiments += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    swept: list[str] = []
    for i in range(0, len(experiments), 100):
        token = None
        while True:
            runs = c.search_runs(
                experiments[i : i + 100], query, run_view_type=ViewType.ALL, max_results=1000, page_token=token
            )
            for r in runs:
                owner = r.data.tags.get(OWNER_PROCESS_TAG, "")
                pid = owner.split(":", 1)[0]
                if not pid.isdigit() or process_identity(int(pid)) == owner:
                    continue  # its server still runs (or the tag is not ours): never touch it
                c.set_tag(r.info.run_id, ENDED_BY_TAG, f"startup sweep of {service}: server process {owner} is gone")
                c.set_terminated(r.info.run_id, status="FAILED")
                swept.append(r.info.run_id)
            token = runs.token
            if not token:
                break
    return swept
