#!/usr/bin/env bash
# mypy over the library (zsc) and the cores (zsc_<service>.core) by import name: each folder is its import name, so
# the source roots on MYPYPATH are the whole layout.
set -euo pipefail
cd "$(dirname "$0")/.."
roots=(shared services/*)
packages=(-p zsc)
for core in services/*/zsc_*/core; do packages+=(-p "$(basename "$(dirname "$core")").core"); done
MYPYPATH="$(IFS=:; echo "${roots[*]}")" exec .venv/bin/mypy --config-file pyproject.toml --cache-dir build/mypy_cache \
  "${packages[@]}" "$@"
