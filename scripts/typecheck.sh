#!/usr/bin/env bash
# mypy over the library (zsc) and the cores (zsc_<service>.core) by import name: each folder is its import name, so
# the source roots on MYPYPATH are the whole layout.
set -euo pipefail
cd "$(dirname "$0")/.."
roots=(shared services/*)
packages=(-p zsc)
for core in services/*/zsc_*/core; do packages+=(-p "$(basename "$(dirname "$core")").core"); done
mypypath="$(IFS=:; echo "${roots[*]}")"
# mypy replays the errors it cached for an unchanged file under the path the file had when they were found: a cache
# written under another layout (the old build/typecheck symlink tree named shared/zsc/x.py zsc/x.py) is dropped.
cache=build/mypy_cache
layout="$PWD $mypypath"
if [ "$(cat "$cache/layout" 2>/dev/null)" != "$layout" ]; then
  rm -rf "$cache" build/typecheck
  mkdir -p "$cache"
  echo "$layout" >"$cache/layout"
fi
MYPYPATH="$mypypath" exec .venv/bin/mypy --config-file pyproject.toml --cache-dir "$cache" "${packages[@]}" "$@"
