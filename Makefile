# Two commands: `make up` (sandbox + Airflow UI) and `make test` (the whole suite).
# Every path is taken from this file's directory, so `make -C DIR` / `make -f DIR/Makefile` work from anywhere.
ROOT   := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
PYTHON ?= python3
VENV   := $(ROOT)/.venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROMTOOL := $(BIN)/promtool
SANDBOX := cd $(ROOT) && $(BIN)/python -m sandbox
# The suite on the machine's cores, one worker per test file (its module fixtures are made once);
# at most 4 workers (each starts its own PostgreSQL and S3 servers). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= auto
PYTEST  := $(BIN)/python -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --maxprocesses=4 --dist loadfile)

.PHONY: up down test test-dates venv bench clean status browser defect heal day

venv: $(STAMP) $(PROMTOOL)

$(STAMP): $(ROOT)/requirements.txt $(ROOT)/constraints.txt $(ROOT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r $(ROOT)/requirements.txt -c $(ROOT)/constraints.txt
	$(BIN)/pip install --quiet --no-deps -e $(ROOT)
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

# Headless Chromium for the health page's browser test (tests/test_health_browser.py, driven by the
# pinned Playwright with executable_path): Debian's package, installed when missing (the test runs as
# root in CI; Playwright's own browser download is never used).
CHROMIUM ?= /usr/bin/chromium
browser: $(CHROMIUM)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	else \
	  echo "note: $(CHROMIUM) is missing and installing Debian's chromium needs root;"; \
	  echo "      the browser tests will be skipped (run 'sudo make browser' to include them)"; \
	fi

up: venv
	$(SANDBOX) up

down:
	@if [ -x $(BIN)/python ]; then $(SANDBOX) down; fi

status: venv
	$(SANDBOX) status

# make defect NAME=bitflip [SOURCE=trixtech-db]; without NAME: the list. make heal undoes them all.
defect: venv
	$(SANDBOX) defect $(if $(NAME),$(NAME),--list) $(if $(SOURCE),--source $(SOURCE))

heal: venv
	$(SANDBOX) heal

# A scripted newcomer's day against the real sandbox (README "A newcomer's day"; ~15 min).
day: venv browser
	cd $(ROOT) && $(BIN)/python bench/newcomer_day.py

test: venv browser
	cd $(ROOT) && $(PYTEST)

# The suite on boundary dates (leap day, year end, EU DST change, US DST change just before 08:00
# UTC), with Debian's faketime (installed when missing and we are root). One process: with
# parallel workers under libfaketime, PostgreSQL's recovery servers in the WAL fixtures die.
DATES ?= "2028-02-29 23:50:00" "2026-12-31 23:55:00" "2027-03-28 00:55:00" "2027-11-07 07:58:00"
test-dates: venv browser
	@command -v faketime >/dev/null || { [ "$$(id -u)" = 0 ] && { apt-get install -y -q faketime || { apt-get update -q && apt-get install -y -q faketime; }; }; } \
	  || { echo "faketime is missing: apt-get install faketime"; exit 2; }
	@cd $(ROOT) && for d in $(DATES); do echo "== $$d"; faketime "$$d" $(BIN)/python -m pytest -q -p no:cacheprovider || exit 1; done

bench: venv
	cd $(ROOT) && $(BIN)/python bench/run_all.py

clean: down
	rm -rf $(ROOT)/.sandbox
