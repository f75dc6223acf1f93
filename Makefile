# Two commands for a fresh machine with Python 3.11:  `make repro` (main job) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro smoke test lint ui

setup: $(VENV)/.installed

# torch first and alone, pinned: any later resolution sees it satisfied and never pulls a CUDA build.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/pip install -q -c constraints.txt --no-deps --no-build-isolation -e .
	touch $@

repro: setup
	$(BIN)/dvc repro

smoke: setup
	$(BIN)/dvc exp run -S profile=smoke

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
