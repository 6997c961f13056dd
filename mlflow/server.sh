#!/usr/bin/env bash
# The MLflow UI and registry over zsc's local store (mlflow/mlflow.db, artifacts in mlflow/artifacts), on loopback.
# A team runs `mlflow server` against Postgres and an object store instead and sets MLFLOW_TRACKING_URI.
set -euo pipefail
cd "$(dirname "$0")"
exec "${MLFLOW:-../.venv/bin/mlflow}" server \
  --backend-store-uri "sqlite:///$PWD/mlflow.db" \
  --artifacts-destination "$PWD/artifacts" \
  --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}"
