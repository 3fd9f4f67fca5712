# `make run`: set up everything and run the node on config/pacs-node.toml.
# `make test`: set up everything and run the whole test suite.
VENV ?= .venv
CONFIG ?= config/pacs-node.toml

.PHONY: setup run test bench-ingest
setup:
	@VENV=$(VENV) scripts/setup.sh

run: setup
	$(VENV)/bin/pacs-node serve --config $(CONFIG)

test: setup
	$(VENV)/bin/python -m pytest -q

bench-ingest: setup
	$(VENV)/bin/python benchmarks/ingest.py
