"""The MLflow model registry the way zsc uses it, for every service and the CLI: one registered-name rule
(``check_model_name``), one resolver of model URIs (``resolve`` -> ``ResolvedModel``, see ``URI_FORMS``), one
mapping of MLflow's errors (``mlflow_errors``), the model's files (``fetch``, ``download``, ``load_files``), a folder
or a pyfunc model registered as a version (``register_folder``, ``log_pyfunc_model``), the one format of real-test
results on a version (``real_test_tags``), metric-gated promotion with an alias history, and a side-by-side review
of a model's versions.

No function here calls ``mlflow.set_tracking_uri`` or uses the fluent run API. Logging goes through the explicit
``MlflowClient`` of ``zsc.tracking``: the model is saved to a temporary folder with ``mlflow.pyfunc.save_model``
(models-from-code, no pickle), uploaded as an MLflow 3 *logged model* linked to its run, and registered from there.
Loading resolves the URI with the same client, downloads with explicit tracking and registry URIs, and loads the
local copy. So concurrent jobs in one server never see each other's MLflow settings, and nothing leaks into the
environment of child processes.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import operator
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from zsc import tracking
from zsc.errors import FailedPrecondition, InvalidArgument, NotFound

ALIAS_HISTORY_TAG = "zsc.alias_history"
MAX_HISTORY_CHARS = 90_000  # MLflow allows 100k per registered-model tag; the oldest entries go first
REAL_TEST_PREFIX = "real_test."
# What real_test_tags records of an evaluation besides its scores (and the run id), in the review's order.
REAL_TEST_CONTEXT = ("n_images", "dataset", "hash", "time")
FILES_MD5_TAG = "zsc.files.md5"  # the DVC hash of the folder `--model-out` exported the version into
EVAL_PLOTS = ("per_class_accuracy.png", "confusion_matrix.png")
# The params a reviewer compares first; others stay in MLflow.
KEY_PARAMS = ("arch", "epochs", "batch_size", "lr", "weight_decay", "image_size", "pretrained", "seed", "n_train")
LINEAGE_TAGS = (
    "zsc.dataset.uri",
    "zsc.dataset.hash",
    "zsc.dataset.md5",  # the DVC hash (dvc.lock) of the same data
    "zsc.git_commit",
    "zsc.profile",
    "zsc.seed",
    "zsc.synthesis.model",
    "zsc.synthesis.tricks",
    "zsc.synthesis.domains",
    "zsc.synthesis.steps",
    "zsc.synthesis.scheduler",
    "zsc.synthesis.guidance_min",
    "zsc.synthesis.guidance_max",
)

# MLflow's models-from-code loader publishes the model through a module global; serialize saves and loads.
_MLFLOW_MODEL_LOCK = threading.Lock()
_HISTORY_LOCK = threading.Lock()
_T = TypeVar("_T")


@contextmanager
def mlflow_errors(what: str, invalid: type[Exception] = InvalidArgument) -> Iterator[None]:
    """MLflow's exceptions as zsc errors with one line (so the RPC status and the CLI line say what is wrong).

    RESOURCE_DOES_NOT_EXIST is NotFound; INVALID_PARAMETER_VALUE is ``invalid`` (InvalidArgument, except where
    MLflow answers a lookup of something absent that way: an unknown alias is NotFound); anything else propagates
    (INTERNAL)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        text = str(err).strip()
        message = f"{what}: {text.splitlines()[0] if text else err.error_code}"
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFound(message) from err
        if err.error_code == "INVALID_PARAMETER_VALUE":
            raise invalid(message) from err
        raise


# --- registered-model names ----------------------------------------------------------------------------------------
# Names go into MLflow search filters unquoted, so they are restricted to characters that need no quoting.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}"


def check_model_name(name: str) -> str:
    """``name`` if it is a valid registered-model name, else InvalidArgument (the one rule for every service)."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidArgument(
            f"registered model name {name[:80]!r} must be 1-200 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    return name


# --- model URIs ----------------------------------------------------------------------------------------------------
URI_FORMS = "models:/<name>@<alias>, models:/<name>/<version>, models:/<name>/latest or runs:/<run_id>/<path>"
_ALIAS_URI = re.compile(rf"^models:/(?P<name>{NAME_PATTERN})@(?P<alias>[A-Za-z0-9_-]{{1,255}})$")
_VERSION_URI = re.compile(rf"^models:/(?P<name>{NAME_PATTERN})/(?P<version>[0-9]{{1,9}}|latest)$")
_RUN_URI = re.compile(r"^runs:/(?P<run>[A-Za-z0-9][A-Za-z0-9_-]{0,63})/(?P<path>[A-Za-z0-9_.][A-Za-z0-9_./-]{0,499})$")


@dataclass(frozen=True)
class ResolvedModel:
    """What a model URI points at now (an alias or ``latest`` resolves at call time)."""

    uri: str
    name: str  # registered model name; "" for a run's model that no version points at
    version: str
    run_id: str
    storage_uri: str  # where the model's files are (file://, s3://, ...)
    run_path: str = ""  # the artifact path inside ``run_id`` for a runs:/ URI ("" otherwise)

    @property
    def key(self) -> str:
        """A stable identity for caches: the version, or the files of a run's model."""
        return f"models:/{self.name}/{self.version}" if self.version else self.storage_uri

    @property
    def model_uri(self) -> str:
        """The version it resolved to (what lineage records), or the URI itself for a run's unregistered model."""
        return f"models:/{self.name}/{self.version}" if self.version else self.uri

    @property
    def artifact_uri(self) -> str:
        """Where its files are, as a runs:/ URI when the request named one, else the storage location."""
        return f"runs:/{self.run_id}/{self.run_path}" if self.run_path else self.storage_uri


def resolve(uri: str, client: Any = None) -> ResolvedModel:
    """Resolve a model URI (one of ``URI_FORMS``); InvalidArgument if malformed, NotFound if it names nothing.

    Resolution goes through zsc's client only: MLflow's own ``models:/`` artifact repository looks names up through
    a default client (the global tracking URI), so zsc hands MLflow nothing but the storage location."""
    client = client or tracking.client()
    uri = uri.strip()
    if m := _ALIAS_URI.match(uri):
        # MLflow answers an unknown model with RESOURCE_DOES_NOT_EXIST, an unknown alias with INVALID_PARAMETER.
        with mlflow_errors(f"model {uri!r} not found", invalid=NotFound):
            mv = client.get_model_version_by_alias(m["name"], m["alias"])
    elif m := _VERSION_URI.match(uri):
        mv = _model_version(uri, m["name"], m["version"], client)
    elif m := _RUN_URI.match(uri):
        path = m["path"].strip("/")
        if ".." in path.split("/"):
            raise InvalidArgument(f"model URI {uri!r} may not contain '..'")
        return _resolve_run_model(uri, m["run"], path, client)
    else:
        raise InvalidArgument(f"model URI {uri[:200]!r} is not one of {URI_FORMS}")
    source = mv.source or ""
    if source.startswith("runs:/"):  # registered elsewhere from a runs:/ URI: its files are the run's
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        storage = _run_artifacts(uri, run_id, client) + "/" + path.strip("/")
    else:
        with mlflow_errors(f"model {uri!r} not found"):
            storage = client.get_model_version_download_uri(mv.name, str(mv.version))
    return ResolvedModel(uri, mv.name, str(mv.version), mv.run_id or "", storage)


def _model_version(uri: str, name: str, version: str, client: Any) -> Any:
    """Version ``version`` of ``name``; ``latest`` is its highest version number."""
    with mlflow_errors(f"model {uri!r} not found"):
        if version != "latest":
            return client.get_model_version(name, version)
        client.get_registered_model(name)  # NotFound names the model rather than "no versions"
        versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise NotFound(f"model {uri!r} not found: {name!r} has no versions")
    return max(versions, key=lambda v: int(v.version))


def _run_artifacts(uri: str, run_id: str, client: Any) -> str:
    with mlflow_errors(f"run of {uri!r} not found"):
        return str(client.get_run(run_id).info.artifact_uri).rstrip("/")


def _resolve_run_model(uri: str, run_id: str, path: str, client: Any) -> ResolvedModel:
    """``runs:/<id>/<path>``: the run's logged model named ``path`` (MLflow 3), else the run's artifact folder."""
    with mlflow_errors(f"run of {uri!r} not found"):
        run = client.get_run(run_id)
    storage = f"{run.info.artifact_uri.rstrip('/')}/{path}"
    logged_id = None
    page_token = None
    while True:
        page = client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{path}'", page_token=page_token
        )
        found = next((lm for lm in page if lm.source_run_id == run_id), None)
        if found is not None:
            storage, logged_id = found.artifact_location, found.model_id
            break
        if not page.token:
            break
        page_token = page.token
    # Name the registered version holding these files, if exactly one does (for lineage).
    versions = [
        mv
        for mv in client.search_model_versions(f"run_id = '{run_id}'")
        if (logged_id and getattr(mv, "model_id", None) == logged_id)
        or (mv.source or "").rstrip("/") in (storage.rstrip("/"), f"runs:/{run_id}/{path}")
        or (mv.source or "").rstrip("/").endswith(f"/{path}")
    ]
    name, version = (versions[0].name, str(versions[0].version)) if len(versions) == 1 else ("", "")
    return ResolvedModel(uri, name, version, run_id, storage, run_path=path)


def fetch(model: ResolvedModel, dst: Path) -> Path:
    """The local folder of the model's files: read in place from a local artifact store, else downloaded into
    ``dst``. NotFound when its files are gone."""
    parsed = urlparse(model.storage_uri)
    if parsed.scheme in ("", "file"):  # the embedded store: no copy needed
        path = Path(url2pathname(parsed.path) if parsed.scheme else model.storage_uri)
    else:
        path = _download(model, dst)
    if not path.is_dir():
        raise NotFound(f"model {model.uri!r} has no model folder at {model.storage_uri}")
    return path


def download(model: ResolvedModel, dst: Path) -> Path:
    """A copy of the MLflow model's files in ``dst``; returns the local model directory (NotFound without an
    MLmodel file)."""
    path = _download(model, dst)
    if not (path / "MLmodel").is_file():
        raise NotFound(f"{model.uri!r} is not an MLflow model (no MLmodel file)")
    return path


def _download(model: ResolvedModel, dst: Path) -> Path:
    import mlflow.artifacts

    try:
        with mlflow_errors(f"model {model.uri!r} not found"):
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=model.storage_uri, dst_path=str(dst)))
    except OSError as err:
        raise NotFound(f"model {model.uri!r} has no files at {model.storage_uri}") from err


def load_files(model: ResolvedModel, read: Callable[[Path], _T]) -> _T:
    """``read(folder)`` on the model's files (see ``fetch``); a downloaded copy is removed afterwards, so ``read``
    must load what it needs into memory."""
    with tempfile.TemporaryDirectory(prefix="zsc-model-") as tmp:
        return read(fetch(model, Path(tmp)))


def model_artifacts(local_dir: Path) -> dict[str, Path]:
    """The named artifact files of a downloaded pyfunc model, read from its MLmodel file (safe YAML).

    Services load their own models through this and their own code: ``mlflow.pyfunc.load_model`` would run the
    code file stored in the model, or unpickle a pickled python_model, and a request names which model to load."""
    import yaml

    try:
        spec = yaml.safe_load((local_dir / "MLmodel").read_text(encoding="utf-8"))
        entries = spec["flavors"]["python_function"]["artifacts"]
        relative = {str(name): str(entry["path"]) for name, entry in entries.items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        raise FailedPrecondition(f"{local_dir.name} is not a pyfunc model with artifacts") from err
    root = local_dir.resolve()
    files = {}
    for name, rel in relative.items():
        path = (local_dir / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():  # a crafted MLmodel must not point elsewhere
            raise FailedPrecondition(f"artifact {name!r} of {local_dir.name} is not a file inside the model")
        files[name] = path
    return files


def load_pyfunc(local_dir: Path) -> Any:
    """``mlflow.pyfunc.load_model`` on a downloaded copy (no tracking server involved).

    It executes the model's stored code (and would unpickle a pickled model): for trusted models only; services use
    ``model_artifacts`` instead."""
    import mlflow.pyfunc

    with _MLFLOW_MODEL_LOCK:
        return mlflow.pyfunc.load_model(str(local_dir), suppress_warnings=True)


def log_pyfunc_model(
    run: tracking.Run,
    *,
    code_path: str,
    artifacts: dict[str, str],
    registered_model_name: str,
    tags: dict[str, str],
    pip_requirements: list[str],
    name: str = "model",
    model_type: str = "",
    signature: Any = None,
    input_example: Any = None,
    code_paths: list[str] | None = None,
) -> RegisteredVersion:
    """Log a models-from-code pyfunc model to ``run`` (as an MLflow 3 logged model) and register it.

    ``code_paths``: files the code file imports, stored in the model's ``code/`` folder (MLflow puts it on the path).

    Returns the new version. Equivalent to ``mlflow.pyfunc.log_model(python_model=code_path,
    artifacts=..., registered_model_name=...)``, but through an explicit client (see the module docstring)."""
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    check_model_name(registered_model_name)
    client = run.client
    experiment_id = client.get_run(run.id).info.experiment_id
    logged = client.create_logged_model(
        experiment_id, name=name, source_run_id=run.id, tags=tags, model_type=model_type or None
    )
    try:
        client.log_outputs(run.id, [LoggedModelOutput(logged.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="zsc-model-") as tmp:
            local = Path(tmp) / name
            meta = Model(
                artifact_path=logged.artifact_location,
                run_id=run.id,
                model_uuid=logged.model_id,
                model_id=logged.model_id,
            )
            with _MLFLOW_MODEL_LOCK:
                mlflow.pyfunc.save_model(
                    path=str(local),
                    python_model=code_path,
                    artifacts=artifacts,
                    pip_requirements=pip_requirements,
                    mlflow_model=meta,
                    signature=signature,
                    input_example=input_example,
                    code_paths=code_paths,
                )
            for cache in list(local.rglob("__pycache__")):  # save_model imports the code file; keep it clean
                shutil.rmtree(cache, ignore_errors=True)
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")  # never leave it PENDING
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    # The storage location, not "models:/<model_id>": MLflow's SQL registry resolves the latter through a default
    # MlflowClient(), i.e. the global tracking URI, which zsc never sets.
    return _create_version(client, registered_model_name, logged.artifact_location, run.id, name, tags, logged.model_id)


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version just registered."""

    name: str
    version: str
    run_id: str
    artifact_path: str  # its files inside the run (a folder, or an MLflow 3 logged model's name)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def artifact_uri(self) -> str:
        return f"runs:/{self.run_id}/{self.artifact_path}"


def register_folder(
    run: tracking.Run, folder: Path, artifact_path: str, name: str, tags: dict[str, str]
) -> RegisteredVersion:
    """Log ``folder``'s files under ``artifact_path`` of ``run`` and register them as a new version of ``name``."""
    check_model_name(name)
    client = run.client
    with mlflow_errors(f"cannot log the files of {name!r}"):
        client.log_artifacts(run.id, str(folder), artifact_path)
    # The storage location, not runs:/...: MLflow resolves runs:/ sources through its global tracking URI, which
    # zsc never sets.
    source = f"{run.artifact_uri.rstrip('/')}/{artifact_path}"
    return _create_version(client, name, source, run.id, artifact_path, tags)


def _create_version(
    client: Any, name: str, source: str, run_id: str, artifact_path: str, tags: dict[str, str], model_id: str = ""
) -> RegisteredVersion:
    """Register ``source`` as a new version of ``name`` (creating the registered model on first use)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise InvalidArgument(f"cannot create registered model {name!r}: {str(err).splitlines()[0]}") from err
    with mlflow_errors(f"cannot register {name!r}"):
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags, model_id=model_id or None)
    return RegisteredVersion(mv.name, str(mv.version), run_id, artifact_path)


def tag_version(name: str, version: str, tags: dict[str, Any], client: Any = None) -> None:
    client = client or tracking.client()
    with mlflow_errors(f"model {name!r} version {version} not found"):
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, str(value))


def real_test_tags(
    metrics: Mapping[str, float],
    *,
    run_id: str,
    dataset: str,
    n_images: int,
    data_hash: str = "",
    now: float | None = None,
) -> dict[str, str]:
    """The ``real_test.*`` tags of a model version evaluated once on real test data: the one format every service
    writes and the review and the promotion gates read.

    Every score at full float precision, then the evaluation's context (``REAL_TEST_CONTEXT``): the images scored,
    the dataset and its hash, when, and the evaluation run (whose plots the review embeds)."""
    clash = sorted({"run_id", *REAL_TEST_CONTEXT} & set(metrics))
    if clash:
        raise ValueError(f"metric names {clash} are real_test context fields")
    tags = {f"{REAL_TEST_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}
    when = datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc)
    context = {
        "n_images": str(int(n_images)),
        "dataset": dataset,
        "hash": data_hash,
        "time": when.isoformat(timespec="seconds"),
        "run_id": run_id,
    }
    tags.update({f"{REAL_TEST_PREFIX}{k}": v for k, v in context.items() if v})
    return tags


def version_with_files(files_md5: str, where: str, client: Any = None) -> str:
    """``models:/NAME/VERSION`` of the newest registered version whose exported files hash to ``files_md5``.

    A pipeline stage names its model by the files an earlier stage wrote (``--model-out``), not by an alias: DVC's
    run-cache can bring back older files without moving the alias, and then the files are the truth. Several
    versions can hold the same files (a forced retraining is byte-identical); any of them is the same model, and the
    newest one gets the evaluation's tags. ``where`` names the folder in the error."""
    client = client or tracking.client()
    with mlflow_errors(f"no registered model version for {where}"):
        versions = list(client.search_model_versions(f"tags.`{FILES_MD5_TAG}` = '{files_md5}'"))
    if not versions:
        raise FailedPrecondition(
            f"no registered model version has the files of {where} ({files_md5}): rerun the stage that wrote them, "
            "with the same MLflow store"
        )
    newest = max(versions, key=lambda mv: (int(mv.creation_timestamp or 0), int(mv.version)))
    return f"models:/{newest.name}/{newest.version}"


# --- metric-gated promotion with an alias history ------------------------------------------------------------------
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}
_GATE = re.compile(
    r"^\s*(?P<metric>[A-Za-z0-9_./:-]+)\s*(?P<op>>=|<=|==|>|<)\s*(?P<value>[-+]?[0-9.]+(e[-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Gate:
    """``metric >= value`` and friends; ``metric`` is a model-version tag (real_test.top1) or a run metric."""

    metric: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        m = _GATE.match(text)
        if m is None:
            raise InvalidArgument(
                f"bad gate {text!r}; write METRIC>=VALUE (also >, <=, <, ==), e.g. real_test.top1>=0.8"
            )
        return cls(m["metric"], m["op"], float(m["value"]))

    def passes(self, value: float | None) -> bool:
        return value is not None and math.isfinite(value) and _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


class PromotionRefused(FailedPrecondition):
    """A gate failed; the alias is unchanged."""


def version_metrics(mv: Any, client: Any = None) -> dict[str, float]:
    """Numeric model-version tags (e.g. real_test.top1) over the training run's metrics (e.g. best_val_accuracy)."""
    client = client or tracking.client()
    metrics: dict[str, float] = {}
    from mlflow.exceptions import MlflowException

    if mv.run_id:
        with contextlib.suppress(MlflowException):  # a purged run leaves the version's own tags to gate on
            metrics.update(client.get_run(mv.run_id).data.metrics)
    for key, value in (mv.tags or {}).items():
        try:
            metrics[key] = float(value)
        except (TypeError, ValueError):
            continue
    return metrics


def alias_history(name: str, client: Any = None) -> list[dict[str, Any]]:
    """The promotions recorded on the registered model, oldest first."""
    client = client or tracking.client()
    with mlflow_errors(f"registered model {name!r} not found"):
        model = client.get_registered_model(name)
    raw = (model.tags or {}).get(ALIAS_HISTORY_TAG, "[]")
    try:
        history = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return history if isinstance(history, list) else []


def promote(
    name: str, version: str, alias: str, require: Sequence[str] = (), client: Any = None, now: float | None = None
) -> dict[str, Any]:
    """Point ``alias`` at ``version`` if every gate passes, and append the move to the alias history.

    Raises PromotionRefused (alias untouched) when a gate fails or its metric is missing."""
    client = client or tracking.client()
    gates = [Gate.parse(r) for r in require]
    with mlflow_errors(f"model {name!r} version {version} not found"):
        mv = client.get_model_version(name, str(version))
    metrics = version_metrics(mv, client)
    failed = []
    for gate in gates:
        value = metrics.get(gate.metric)
        if not gate.passes(value):
            got = "missing" if value is None else f"{value:.4g}"
            failed.append(f"{gate.metric} is {got}, needs {gate.op} {gate.threshold:g}")
    if failed:
        raise PromotionRefused(f"refused to promote {name} version {version} to @{alias}: {'; '.join(failed)}")
    with _HISTORY_LOCK:
        previous = _alias_target(client, name, alias)
        with mlflow_errors(f"cannot set alias {alias!r} on {name!r}"):
            client.set_registered_model_alias(name, alias, str(version))
        entry = {
            "alias": alias,
            "version": str(version),
            "time": datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc).isoformat(),
            "previous": previous,
            "gates": [str(g) for g in gates],
        }
        history = [*alias_history(name, client), entry]
        while len(json.dumps(history)) > MAX_HISTORY_CHARS and len(history) > 1:
            history.pop(0)
        client.set_registered_model_tag(name, ALIAS_HISTORY_TAG, json.dumps(history))
    return entry


def _alias_target(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


# --- review --------------------------------------------------------------------------------------------------------
@dataclass
class VersionSummary:
    version: str
    aliases: list[str]
    created: str
    run_id: str
    real_test: dict[str, str]
    validation: dict[str, str]
    params: dict[str, str]
    lineage: dict[str, str]
    eval_run_id: str = ""
    plots: dict[str, bytes] = field(default_factory=dict)


def summarize_versions(name: str, client: Any = None, with_plots: bool = False) -> list[VersionSummary]:
    """Every version of ``name``, newest first, with what a reviewer compares."""
    from mlflow.exceptions import MlflowException

    client = client or tracking.client()
    with mlflow_errors(f"registered model {name!r} not found"):
        registered = client.get_registered_model(name)
        versions = client.search_model_versions(f"name = '{name}'")
    # The registered model carries the aliases; versions from a search come without them in some stores.
    aliases = dict(registered.aliases or {})
    out = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = dict(mv.tags or {})
        params: dict[str, str] = {}
        validation: dict[str, str] = {}
        if mv.run_id:
            try:
                run = client.get_run(mv.run_id)
                params = dict(run.data.params)
                validation = {
                    k: _fmt(v) for k, v in run.data.metrics.items() if k in ("best_val_accuracy", "best_epoch")
                }
            except MlflowException:  # a purged run: show what the version itself carries
                pass
        summary = VersionSummary(
            version=str(mv.version),
            aliases=sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
            created=datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M"),
            run_id=mv.run_id or "",
            real_test={
                k.removeprefix(REAL_TEST_PREFIX): _fmt(v)
                for k, v in sorted(tags.items(), key=_real_test_order)
                if k.startswith(REAL_TEST_PREFIX) and k != f"{REAL_TEST_PREFIX}run_id"
            },
            validation=validation,
            params={k: params[k] for k in KEY_PARAMS if k in params},
            lineage={k.removeprefix("zsc."): tags[k] for k in LINEAGE_TAGS if k in tags},
            eval_run_id=tags.get(f"{REAL_TEST_PREFIX}run_id", ""),
        )
        if with_plots and summary.eval_run_id:
            summary.plots = _eval_plots(client, summary.eval_run_id)
        out.append(summary)
    return out


def _real_test_order(item: tuple[str, str]) -> tuple[int, str]:
    """top1 first, then the other scores, then what, where and when they were measured."""
    key = item[0].removeprefix(REAL_TEST_PREFIX)
    if key in REAL_TEST_CONTEXT:
        return (3 + REAL_TEST_CONTEXT.index(key), key)
    return ({"top1": 0, "macro_accuracy": 1}.get(key, 2), key)


def _eval_plots(client: Any, run_id: str) -> dict[str, bytes]:
    from mlflow.exceptions import MlflowException

    plots = {}
    with tempfile.TemporaryDirectory(prefix="zsc-review-") as tmp:
        for artifact in EVAL_PLOTS:
            try:
                plots[artifact] = Path(client.download_artifacts(run_id, artifact, tmp)).read_bytes()
            except (MlflowException, OSError):  # an evaluation without plots still gets its row in the table
                continue
    return plots


def _fmt(value: Any) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(f)) if f.is_integer() and abs(f) >= 1 else f"{f:.4f}"


def _short(key: str, value: str) -> str:
    if key in ("dataset.hash",):
        kind, _, digest = value.partition(":")
        return f"{kind}:{digest[:12]}" if digest else value[:20]
    if key == "git_commit":
        return value[:10]
    return value


def review_rows(versions: list[VersionSummary]) -> tuple[list[str], list[list[str]]]:
    """A side-by-side table: one column per version, one row per field (sections in order)."""
    header = ["", *[f"v{v.version}" for v in versions]]
    rows: list[list[str]] = [
        ["aliases", *[", ".join(f"@{a}" for a in v.aliases) or "-" for v in versions]],
        ["created (UTC)", *[v.created for v in versions]],
    ]

    def section(title: str, get: Callable[[VersionSummary], dict[str, str]], fmt=lambda k, x: x) -> None:
        keys: list[str] = []
        for v in versions:
            keys += [k for k in get(v) if k not in keys]
        for k in keys:
            rows.append([f"{title}{k}", *[fmt(k, get(v).get(k, "-")) for v in versions]])

    section("real test: ", lambda v: v.real_test)
    section("synthetic val: ", lambda v: v.validation)
    section("", lambda v: v.params)
    section("lineage: ", lambda v: v.lineage, _short)
    rows.append(["run", *[v.run_id[:12] for v in versions]])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(map(cell, r)) + " |" for r in rows)])


CHANCE_LEVEL_NOTE = (
    "versions {versions} come from the tiny profile: random-weight models, so their accuracies are chance level by "
    "design"
)


def chance_level_note(versions: list[VersionSummary]) -> str:
    """One line naming the versions trained with the tiny profile, whose numbers mean nothing; "" if none."""
    tiny = [f"v{v.version}" for v in versions if v.lineage.get("profile") == "tiny"]
    return CHANCE_LEVEL_NOTE.format(versions=", ".join(tiny)) if tiny else ""


def review_html(name: str, versions: list[VersionSummary], history: list[dict[str, Any]]) -> str:
    """A self-contained HTML report: the table, the alias history and each version's evaluation plots."""
    header, rows = review_rows(versions)
    e = html.escape
    table = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows]
    table.append("</table>")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>zsc registry review: {e(name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}"
        "img{max-width:48%;margin:4px;border:1px solid #eee}</style></head><body>",
        f"<h1>{e(name)}</h1>",
        *([f"<p style='color:#a00'><b>Note:</b> {e(note)}.</p>"] if (note := chance_level_note(versions)) else []),
        *table,
        "<h2>Alias history</h2><ul>",
        *[
            f"<li>{e(str(h.get('time', '')))}: @{e(str(h.get('alias')))} → v{e(str(h.get('version')))} "
            f"(was {e(str(h.get('previous') or 'unset'))})</li>"
            for h in reversed(history)
        ],
        "</ul>",
    ]
    for v in versions:
        parts.append(f"<h2 id='v{e(v.version)}'>Version {e(v.version)} {e(' '.join('@' + a for a in v.aliases))}</h2>")
        if not v.plots:
            parts.append("<p>No real-test evaluation logged for this version.</p>")
        for artifact, data in v.plots.items():
            b64 = base64.b64encode(data).decode("ascii")
            parts.append(f"<img alt='{e(artifact)} of v{e(v.version)}' src='data:image/png;base64,{b64}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report_index(folder: Path, extra: dict[str, Path] | None = None) -> Path:
    """``folder/index.html``: a link to every HTML report in ``folder`` (and to ``extra`` pages by title)."""
    e = html.escape
    reports = sorted(p for p in folder.glob("*.html") if p.name != "index.html")
    links = [(p.stem, p.name) for p in reports]
    links += [(title, os.path.relpath(path, folder)) for title, path in (extra or {}).items() if path.is_file()]
    items = "\n".join(f"<li><a href='{e(href)}'>{e(title)}</a></li>" for title, href in links)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>zsc reports</title>"
        "<style>body{font-family:sans-serif;margin:2em}</style></head><body>"
        f"<h1>zsc reports</h1><ul>\n{items}\n</ul></body></html>"
    )
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def review(name: str, html_path: Path | None = None, client: Any = None) -> tuple[str, Path | None]:
    """The markdown table of every version and, with ``html_path``, the HTML report written there."""
    client = client or tracking.client()
    versions = summarize_versions(name, client, with_plots=html_path is not None)
    if not versions:
        raise NotFound(f"registered model {name!r} has no versions")
    history = alias_history(name, client)
    text = markdown(*review_rows(versions))
    if note := chance_level_note(versions):
        text += f"\n\nNote: {note}."
    if history:
        last = history[-1]
        text += f"\n\nlast promotion: @{last['alias']} -> v{last['version']} at {last['time']}"
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(review_html(name, versions, history), encoding="utf-8")
    return text, html_path
