# Two commands: `make up` (sandbox + Airflow UI) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROMTOOL := $(BIN)/promtool

.PHONY: up down test venv bench clean status

venv: $(STAMP) $(PROMTOOL)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# promtool (checks and unit-tests include/prometheus rules) is a Go binary that PyPI does not
# ship: use the one on PATH if there is one, else unpack it from Debian's prometheus package
# (downloaded with apt, extracted only: no Prometheus service is installed or started).
$(PROMTOOL): | $(STAMP)
	@set -e; \
	if found=$$(command -v promtool); then \
	  ln -sf "$$found" $@; \
	else \
	  tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; chmod 0777 "$$tmp"; \
	  ( cd "$$tmp" && { apt-get download -q prometheus || { apt-get update -q && apt-get download -q prometheus; }; } ); \
	  dpkg-deb -x "$$tmp"/prometheus_*.deb "$$tmp/root"; \
	  install -m 0755 "$$tmp/root/usr/bin/promtool" $@; \
	fi; \
	$@ --version | head -n 1

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
