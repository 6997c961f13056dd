"""The registry flow against an MLflow server on a real PostgreSQL with its artifacts in S3-compatible storage (moto's
server), as a team runs zsc past one machine: train -> register with lineage -> evaluate -> promote with the gate ->
`zsc registry review`, through a real classification service whose own MLflow writes go to that server. The same
flow on the default sqlite store gives the same tags, metrics and review."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from integration.servers import (
    S3,
    MlflowServer,
    Postgres,
    Unavailable,
    mlflow_server,
    postgres,
    postgres_runner,
    s3_server,
)
from PIL import Image

from zsc import registry, tracking

pytestmark = [pytest.mark.slow, pytest.mark.service]
BUCKET = "zsc-mlflow"
NAME = "zsc-test-server-downstream"
CLASSES = ["cat", "dog", "ship"]
# Ids, times and where a file lives differ between two stores by design; everything else must match.
PER_STORE_TAGS = {"real_test.run_id", "real_test.time"}
PER_STORE_ROWS = {"created (UTC)", "run", "real test: time"}


def _untimed(metrics: dict[str, float]) -> dict[str, float]:
    """Timings (logged to MLflow, never to DVC) differ from run to run."""
    return {k: v for k, v in metrics.items() if "second" not in k}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, Postgres, S3]]:
    """PostgreSQL, moto's S3 server with the bucket, and `mlflow server` over both, for this module."""
    try:
        postgres_runner()
    except Unavailable as why:
        pytest.skip(str(why))
    workdir = tmp_path_factory.mktemp("mlflow-server")
    with postgres() as pg, s3_server(workdir) as s3:
        s3.create_bucket(BUCKET)
        with mlflow_server(pg.create_database("mlflow"), f"s3://{BUCKET}/artifacts", s3, workdir) as server:
            yield server, pg, s3


def _folder(root: Path, per_class: int, seed: int) -> Path:
    """An ImageFolder of 32 px PNGs, one colour per class plus noise (learnable, so the metrics are not all 0)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array([90 * c, 255 - 90 * c, 60]) + rng.normal(0, 25, (32, 32, 3)), 0, 255)
            buffer = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
            (root / name / f"{i:05d}.png").write_bytes(buffer.getvalue())
    return root


def _files(model_dir: Path) -> dict[str, str]:
    """The sha256 of each file of a downloaded model but MLmodel (which names its own run and time)."""
    return {
        p.relative_to(model_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != "MLmodel"
    }


def _flow(address: list[str], train: Path, test: Path, html_dir: Path, capsys: pytest.CaptureFixture) -> dict:
    """The README's registry flow through the CLI against whatever store MLFLOW_TRACKING_URI names now."""
    from zsc.cli.main import main

    assert main(["train-classifier", "--data", str(train), "--arch", "test_byobnet", "--epochs", "2",
                 "--batch-size", "8", "--lr", "1e-3", "--seed", "0", "--name", NAME, *address]) == 0  # fmt: skip
    assert main(["evaluate", "--model", f"models:/{NAME}/1", "--data", str(test), *address]) == 0
    capsys.readouterr()
    assert main(["registry", "promote", NAME, "--version", "1", "--require", "real_test.top1>1"]) == 1
    assert "refused to promote" in capsys.readouterr().err
    assert main(["registry", "promote", NAME, "--version", "1", "--require", "real_test.top1>=0"]) == 0
    assert f"{NAME}@champion -> v1" in capsys.readouterr().out
    assert main(["registry", "review", NAME, "--html-dir", str(html_dir)]) == 0
    review = capsys.readouterr().out

    client = tracking.client()
    version = client.get_model_version(NAME, "1")
    train_run, eval_run = client.get_run(version.run_id), client.get_run(version.tags["real_test.run_id"])
    rows = [line for line in review.splitlines() if line.startswith("| ")]
    return {
        "tags": version.tags,
        # The REST store answers alias versions as strings, sqlite as ints; zsc compares them as strings.
        "aliases": {a: str(v) for a, v in client.get_registered_model(NAME).aliases.items()},
        "train_metrics": _untimed(train_run.data.metrics),
        "train_params": train_run.data.params,
        "eval_metrics": _untimed(eval_run.data.metrics),
        "rows": {r.split(" | ")[0].removeprefix("| "): r for r in rows},
        "history": [(h["alias"], h["version"], h["gates"]) for h in registry.alias_history(NAME)],
        "model_files": _files(registry.download(registry.resolve(f"models:/{NAME}/1"), html_dir / "model")),
        "html": (html_dir / f"{NAME}-review.html").read_text(),
    }


def test_registry_flow_on_postgres_and_s3_matches_sqlite(
    stack: tuple[MlflowServer, Postgres, S3],
    classification_server,
    data_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    one_torch_thread: None,
) -> None:
    server, pg, s3 = stack
    address = ["--address", f"127.0.0.1:{classification_server.port}"]
    train = _folder(data_root / "mlflow-server-train", per_class=10, seed=0)
    test = _folder(data_root / "mlflow-server-test", per_class=4, seed=1)

    # The default store first: a fresh sqlite database of its own (the service reads the variables per call).
    monkeypatch.setenv("ZSC_MLFLOW_DIR", str(tmp_path / "sqlite"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = _flow(address, train, test, tmp_path / "reports-sqlite", capsys)
    assert (tmp_path / "sqlite" / "mlflow.db").is_file() and s3.keys(BUCKET) == []

    server.wait()  # it started while the sqlite flow ran
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a broken server fails the test, not after minutes
    served = _flow(address, train, test, tmp_path / "reports-server", capsys)

    # The server's stores hold it: the registry rows in PostgreSQL, the model and the plots in the bucket.
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="mlflow") as db, db.cursor() as cur:
        cur.execute("SELECT name, version FROM model_versions")
        assert cur.fetchall() == [(NAME, 1)]
        cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (NAME,))
        assert cur.fetchall() == [("champion", 1)]
    keys = s3.keys(BUCKET)
    assert any(k.startswith("artifacts/") and k.endswith("/artifacts/model.safetensors") for k in keys), keys
    assert any(k.endswith("/confusion_matrix.png") for k in keys), keys

    # Same keys everywhere; seeded numbers equal: training and evaluation did the same thing on either store.
    assert set(served["tags"]) == set(local["tags"])
    same = sorted(set(local["tags"]) - PER_STORE_TAGS)
    assert {k: served["tags"][k] for k in same} == {k: local["tags"][k] for k in same}
    assert "real_test.top1" in same and "zsc.dataset.hash" in same and "zsc.git_commit" in same
    for key in ("train_metrics", "train_params", "eval_metrics", "aliases", "history", "model_files"):
        assert served[key] == local[key], key
    assert served["rows"].keys() == local["rows"].keys()
    assert {k: r for k, r in served["rows"].items() if k not in PER_STORE_ROWS} == {
        k: r for k, r in local["rows"].items() if k not in PER_STORE_ROWS
    }
    assert served["html"].count("data:image/png;base64,") == local["html"].count("data:image/png;base64,") == 2
