# skulens: the two commands of the README are `make demo` and `make test`; each sets itself up.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DBT_SEND_ANONYMOUS_USAGE_STATS ?= False
export BENTOML_DO_NOT_TRACK ?= True
export SPARK_LOCAL_IP ?= 127.0.0.1
export AIRFLOW__CORE__PARALLELISM ?= 4
PYTEST_ARGS ?=

.PHONY: setup demo serve airflow test test-unit test-integration lint lock clean

setup:  ## build .venv from nothing (idempotent, seconds when up to date)
	@scripts/setup.sh

demo: setup  ## the main job: tables, events, the three DAGs, eval, then the service with example searches
	$(BIN)/skulens datasets build
	$(BIN)/skulens datasets simulate-events --catalog homedepot
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/skulens pipeline catalog-ingest
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/skulens pipeline train-and-export
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/skulens pipeline build-index
	$(BIN)/skulens eval
	$(BIN)/skulens serve --examples

serve: setup  ## the search service and its web page on http://127.0.0.1:3000/
	$(BIN)/skulens serve

airflow: setup  ## a real local Airflow (UI, scheduler, schedules on) until Ctrl-C
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/skulens airflow up --foreground

test: setup  ## every test: unit, then integration (real components)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks dags spark_jobs training

lock:  ## re-resolve requirements/lock.txt
	scripts/lock.sh

clean:  ## remove local state (SKULENS_HOME default) but keep .venv
	rm -rf var
