# Every target creates and uses .venv/ in the repo root; nothing is installed outside it
# except the Kafka jars (cached under .cache/kafka, fetched by Maven from Maven Central).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck unit bench broker-fetch system-deps-demo system-deps-test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Java, Maven (Kafka), PostgreSQL and Chromium (tests) from Debian when missing: see the script.
system-deps-demo:
	bash scripts/install-system-deps.sh demo

system-deps-test:
	bash scripts/install-system-deps.sh test

broker-fetch: $(STAMP) system-deps-demo
	$(BIN)/batteryledger broker fetch

demo: $(STAMP) broker-fetch
	$(BIN)/batteryledger demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy schemas ledger
	$(BIN)/mypy batteryledger streams

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: $(STAMP) system-deps-test broker-fetch lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP) broker-fetch
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .cache build *.egg-info
