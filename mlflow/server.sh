#!/usr/bin/env bash
# The MLflow UI and registry over zsc's local store (mlflow/mlflow.db, artifacts in mlflow/artifacts), on loopback.
# A team runs server-postgres-s3.sh (PostgreSQL + S3) instead and sets MLFLOW_TRACKING_URI; see README.md here.
set -euo pipefail
cd "$(dirname "$0")"
# MLflow's usage telemetry stays off unless the caller sets MLFLOW_DISABLE_TELEMETRY=false (as zsc's own commands do).
if [ -z "${MLFLOW_DISABLE_TELEMETRY+x}" ]; then
  export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK="${DO_NOT_TRACK:-true}"
fi
exec "${MLFLOW:-../.venv/bin/mlflow}" server \
  --backend-store-uri "sqlite:///$PWD/mlflow.db" \
  --artifacts-destination "$PWD/artifacts" \
  --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}"
