# One-command set-up: every target below creates or refreshes .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: help install run test test-fast screenshots lint format viz viz-build mlflow-ui mlflow-server mlflow-server-stop bench-localization bench-training bench-scaling bench-saliency clean-data

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# The venv is stale when pyproject.toml or constraints.txt changed after the last install.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" 
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m cxr_spurious.localization.warmup
	@touch $(STAMP)

install: $(STAMP)  ## create .venv (if missing or stale) and install pinned dependencies

run: $(STAMP)  ## run the whole study on the embedded phantom dataset
	$(BIN)/kedro run

test: $(STAMP)  ## lint (ruff check + format check), then the whole test suite (unit, integration, browser, notebooks)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	bash scripts/install_chromium.sh
	bash scripts/install_postgres.sh
	$(BIN)/python -m pytest -n 2 --dist loadgroup

test-fast: $(STAMP)  ## unit tests only
	$(BIN)/python -m pytest -n 2 -m "not integration and not browser"

screenshots: $(STAMP)  ## rerun the browser tests and copy their screenshots to docs/screenshots/ (the README's)
	bash scripts/install_chromium.sh
	CXR_UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -n 2 --dist loadgroup tests/browser

lint: $(STAMP)  ## ruff check (rules incl. E501 at 100 columns) and ruff format --check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)  ## ruff format + the import-order fixes of ruff check
	$(BIN)/ruff check --select I --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

viz: $(STAMP)  ## kedro-viz on 127.0.0.1:4141 (the study overview at the printed address)
	@echo "kedro-viz: the study overview is http://127.0.0.1:4141/?pid=__default__&tags=overview"
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser

viz-build: $(STAMP)  ## static kedro-viz site in build/
	$(BIN)/kedro viz build --include-previews

mlflow-ui: $(STAMP)  ## MLflow UI for the project's SQLite store on 127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

mlflow-server: $(STAMP)  ## team MLflow server on PostgreSQL on 127.0.0.1, port MLFLOW_PORT (default 5000); see README
	bash scripts/install_postgres.sh
	$(BIN)/python -m cxr_spurious.tracking_server start

mlflow-server-stop: $(STAMP)  ## stop the team MLflow server and its project-local PostgreSQL
	$(BIN)/python -m cxr_spurious.tracking_server stop

bench-localization: $(STAMP)  ## localization speed benchmark vs the reference (generates its own set; BENCH_ARGS="--n 20")
	$(BIN)/python benchmarks/bench_localization.py $(BENCH_ARGS)

bench-training: $(STAMP)  ## training loop vs the model's own step, img/s (builds its own cache; BENCH_ARGS="--images 200")
	nice -n 10 $(BIN)/python benchmarks/bench_training.py $(BENCH_ARGS)

bench-scaling: $(STAMP)  ## time and peak memory per stage at 1k/4k/16k phantom images, growth fits (BENCH_ARGS="--sizes 500 1000 2000"; --quick for CI)
	nice -n 10 $(BIN)/python benchmarks/bench_scaling.py --out data/08_reporting/bench_scaling $(BENCH_ARGS)

bench-saliency: $(STAMP)  ## saliency maps/s, project path vs plain pytorch-grad-cam / Captum, interleaved (BENCH_ARGS="--sizes 96")
	nice -n 10 $(BIN)/python benchmarks/bench_saliency.py $(BENCH_ARGS)

clean-data:  ## remove generated data (keeps folder structure)
	find data -type f ! -name .gitkeep -delete
