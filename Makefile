# Two commands: `make up` (sandbox + Airflow UI) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up down test venv bench clean status

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

up: venv
	$(BIN)/python -m backupkit.sandbox up

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m backupkit.sandbox down; fi

status: venv
	$(BIN)/python -m backupkit.sandbox status

test: venv
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python bench/run_all.py

clean: down
	rm -rf .sandbox
