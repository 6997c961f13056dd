# zsc developer commands. `make install` then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip warns about every absent local index location; keep its real errors and exit code.
QUIET_PIP := { grep -v "is ignored" || true; }
PIP := $(BIN)/python -m pip

.PHONY: install protos test test-fast lint typecheck demo mlflow-ui up clean

install: ## create .venv and install zsc with pinned dependencies
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" 2>&1 | $(QUIET_PIP)
	$(PIP) install -q -c requirements/constraints.txt -e ".[dev,lite]" 2>&1 | $(QUIET_PIP)
	$(BIN)/python scripts/plots_template.py   # vega for `dvc plots show` offline (npm registry)
	$(BIN)/python -c "import open_clip, timm, torchvision, diffusers, grpc, mlflow, zsc, zsc_synthesis, zsc_recovery, zsc_generative, zsc_classification; print('zsc installed:', torchvision.__version__)"

protos: ## regenerate the committed gRPC stubs from protos/
	$(BIN)/python -m zsc.protogen

test: ## the whole suite (CI runs this)
	$(BIN)/python -m pytest -q -n 2 --timeout 900

test-fast:
	$(BIN)/python -m pytest -q -m "not slow and not pipeline" --timeout 300

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: ## mypy on the library (zsc) and the cores (zsc_<service>.core); CI runs it after ruff
	scripts/typecheck.sh

up: ## all four services on loopback with params.yaml's profile, allowed to read the repo and its real datasets
	scripts/demo.sh up

demo: ## the pipelines of dvc.yaml end to end (tiny profile: a few minutes on 2 CPU cores), then the registry review
	scripts/demo.sh

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache

mlflow-ui: ## the MLflow UI on http://127.0.0.1:5000 over the local store
	mlflow/server.sh
