#!/usr/bin/env bash
# mypy over the library (zsc) and the cores (zsc_services.*.core) under their import names: the editable install maps
# shared/ and services/ through an import hook mypy cannot follow, so a symlink tree in build/ gives it the layout.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck
mkdir -p "$tree"
ln -sfn ../../shared "$tree/zsc"
ln -sfn ../../services "$tree/zsc_services"
cores=()
for core in services/*/core; do cores+=("zsc_services/${core#services/}"); done
cd "$tree"
exec ../../.venv/bin/mypy --config-file ../../pyproject.toml --cache-dir ../mypy_cache zsc "${cores[@]}" "$@"
