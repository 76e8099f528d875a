# Every target creates and uses .venv/ in the repo root; nothing is installed outside it
# except the Kafka jars (cached under .cache/kafka, fetched by Maven from Maven Central).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck unit bench broker-fetch clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

broker-fetch: $(STAMP)
	$(BIN)/batteryledger broker fetch

demo: $(STAMP) broker-fetch
	$(BIN)/batteryledger demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy schemas ledger

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: $(STAMP) broker-fetch lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP) broker-fetch
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .cache build *.egg-info
