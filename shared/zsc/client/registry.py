"""The client's own access to the MLflow registry, for what a pipeline stage does after a training RPC: name a model
by the files an earlier stage exported, move an alias, export a version's files, read a run's final metrics and
per-epoch curves. These read and write the MLflow store directly (``MLFLOW_TRACKING_URI``, else the local store),
like ``zsc registry``: a remote service and this client must share the tracking server.

Why here and not in the training results: the files land on the client's disk (a remote server cannot write there),
and the alias, metrics and curves are the registry's and the run's own records, which the client reads as any
reviewer does; a result field would copy them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zsc.client.operations import ClientError

MODEL_FILE_SUFFIXES = (".safetensors",)
MODEL_FILE_NAMES = ("config.json",)


def _tracking_client(client: Any) -> Any:
    from zsc import tracking

    return client or tracking.client()


def model_uri(text: str, client: Any = None) -> str:
    """A model reference as a user or a DVC stage gives it: a models:/ or runs:/ URI as is, or a folder that
    ``export_model_files`` wrote, which names the registered version holding exactly those files (see
    ``registry.version_with_files``)."""
    folder = Path(text)
    if "://" in text or text.startswith(("models:/", "runs:/")) or not folder.is_dir():
        return text
    from zsc import registry
    from zsc.lineage import dvc_md5

    return registry.version_with_files(dvc_md5(folder), str(folder), _tracking_client(client))


def promote(name: str, version: str, alias: str, client: Any = None) -> None:
    """Point ``alias`` at version ``version`` of ``name`` (with the alias history ``zsc registry`` keeps)."""
    from zsc import registry

    registry.promote(name, version, alias, client=_tracking_client(client))


def export_model_files(name: str, version: str, out_dir: str | os.PathLike[str], client: Any = None) -> list[Path]:
    """Copy a registered version's own files (weights and config) into ``out_dir``, flat, and tag the version with
    their DVC hash, so that ``model_uri(out_dir)`` finds it again.

    MLflow's wrappers (MLmodel with its run id and creation time, environment files) are left out: they differ
    between two trainings of the same weights, and the registry keeps them anyway."""
    from zsc import registry
    from zsc.lineage import dvc_md5

    client = _tracking_client(client)
    uri, out = f"models:/{name}/{version}", Path(out_dir)
    resolved = registry.resolve(uri, client)
    with tempfile.TemporaryDirectory(prefix="zsc-export-") as tmp:
        local = registry.fetch(resolved, Path(tmp))
        files = sorted(
            p
            for p in local.rglob("*")
            if p.is_file() and (p.suffix in MODEL_FILE_SUFFIXES or p.name in MODEL_FILE_NAMES)
        )
        if not files:
            raise ClientError(f"{uri} holds no weights or config files")
        if len({p.name for p in files}) != len(files):
            raise ClientError(f"{uri} holds several files of the same name: {', '.join(p.name for p in files)}")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for p in files:
            shutil.copyfile(p, out / p.name)
    registry.tag_version(name, version, {registry.FILES_MD5_TAG: dvc_md5(out)}, client)
    return [out / p.name for p in files]


def run_metrics(run_id: str, client: Any = None) -> dict[str, float]:
    """A run's final metrics, by name."""
    return dict(sorted(_tracking_client(client).get_run(run_id).data.metrics.items()))


def metric_curves(run_id: str, keys: list[str], client: Any = None) -> dict[str, dict[int, float]]:
    """The per-step history of each of ``keys`` logged more than once (a curve, not a summary value); a repeated
    step keeps its last value."""
    client = _tracking_client(client)
    curves: dict[str, dict[int, float]] = {}
    for key in keys:
        history = client.get_metric_history(run_id, key)
        if len(history) > 1:
            curves[key] = {m.step: m.value for m in history}
    return curves
