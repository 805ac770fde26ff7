# One command to set up and run each job. Python 3.11; torch 2.13.0 CPU comes from PyPI or a local wheel.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/default

.PHONY: setup audit correct test lint

$(BIN)/safety-prune: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/safety-prune

audit: setup
	$(BIN)/safety-prune assets fetch
	$(BIN)/safety-prune audit --model default --probe toxicity --out $(OUT) --overwrite

correct: setup
	$(BIN)/safety-prune assets fetch
	$(BIN)/safety-prune correct --model default --probe toxicity --method all --intervention proportional \
		--threshold 0 --reach 1,0.3,0.1,0.03 --folds 5 --out runs/correct --overwrite

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy safety_prune/render

test: setup lint
	$(BIN)/python -m pytest -q
