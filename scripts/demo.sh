#!/usr/bin/env bash
# `make demo` (no argument): every pipeline of dvc.yaml end to end with `dvc repro` (profile and sizes from
# params.yaml), then the registry review of the models it registered, real-test metrics included.
#
# The stages are `zsc` client commands. Unless ZSC_<SERVICE>_ADDRESS points them elsewhere, this starts the four
# services once (`zsc up`, stopped again at the end) or uses those a `make up` already runs, so the models load once
# instead of once per stage. Everything is logged to the local MLflow store (mlflow/); `make mlflow-ui` shows it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# One intra-op thread per process: the tiny models' ops are too small to share, and the services, dvc and the stage
# commands run side by side, so threads spinning while they wait for each other cost more than they compute (measured
# on 2 cores: `dvc repro` took less than half the time). Set OMP_NUM_THREADS to override.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
SERVICES=(synthesis recovery generative classification)
PORTS=(50051 50052 50053 50054)

# A dotted key of params.yaml, e.g. `param data.real_test`.
param() { python -c "import functools, sys, yaml; print(functools.reduce(lambda d, k: d[k], sys.argv[1].split('.'), yaml.safe_load(open('params.yaml'))))" "$1"; }

# The services may read the repository and the real datasets that params.yaml names, nothing else.
ROOTS=(--data-root . --data-root "$(param data.real_test)" --data-root "$(param data.real_train)")
if [ "${1:-}" = up ]; then  # `make up`: the same services in the foreground, until Ctrl-C
  exec zsc up --profile "$(param profile)" "${ROOTS[@]}"
fi

started=0
stop() { if [ "$started" = 1 ]; then zsc down >/dev/null || true; fi; }
trap stop EXIT

start_services() {
  local given=0 i var
  for i in "${!SERVICES[@]}"; do
    var="ZSC_${SERVICES[$i]^^}_ADDRESS"
    if [ -n "${!var:-}" ]; then given=1; else export "$var=127.0.0.1:${PORTS[$i]}"; fi
  done
  if zsc health >/dev/null 2>&1; then
    echo "== using the running services:"
    zsc health
  elif [ "$given" = 1 ]; then
    echo "zsc: the services that ZSC_<SERVICE>_ADDRESS names are not all SERVING:" >&2
    zsc health >&2 || true
    exit 1
  else
    echo "== starting the services (profile $(param profile))"
    zsc up --detach --profile "$(param profile)" "${ROOTS[@]}"
    started=1
  fi
}

if dvc status -q >/dev/null 2>&1; then
  echo "== every stage is up to date (dvc status): nothing to run"
else
  start_services
  echo "== dvc repro"
  start=$SECONDS
  dvc repro
  echo "== pipelines done in $((SECONDS - start)) s"
fi
dvc status

echo "== registry review"
names=()
for stage in train_classifier train_generator train_gzsl train_ship finetune; do names+=("$(param "$stage.name")"); done
zsc registry review "${names[@]}" --html-dir reports
