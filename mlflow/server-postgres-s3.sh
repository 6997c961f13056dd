#!/usr/bin/env bash
# A team's MLflow server: runs, metrics and the model registry in PostgreSQL, artifacts in S3 or any S3-compatible
# store (MinIO, Ceph), proxied by the server so that zsc's services and clients need only
# MLFLOW_TRACKING_URI=http://<host>:<port> and no storage credentials. mlflow/README.md explains every variable.
set -euo pipefail
: "${ZSC_MLFLOW_BACKEND_URI:?e.g. postgresql+psycopg2://mlflow:PASSWORD@db-host:5432/mlflow (see mlflow/README.md)}"
: "${ZSC_MLFLOW_ARTIFACTS:?e.g. s3://my-bucket/mlflow (see mlflow/README.md)}"
cd "$(dirname "$0")"
# MLFLOW_S3_ENDPOINT_URL (an S3-compatible store), AWS_* credentials and MLFLOW_SERVER_ALLOWED_HOSTS pass through the
# environment to the server as they are.
exec "${MLFLOW:-../.venv/bin/mlflow}" server \
  --backend-store-uri "$ZSC_MLFLOW_BACKEND_URI" \
  --artifacts-destination "$ZSC_MLFLOW_ARTIFACTS" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}"
