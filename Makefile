# The two set-up commands for a new user are `make demo` and `make test`.
# Both create .venv (Python >= 3.11) with the pinned dependencies if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nodule-installed

.PHONY: venv demo train-demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/nodule demo

train-demo: $(STAMP)
	$(BIN)/nodule demo --train true --out demo_train_out

lint: $(STAMP)
	$(BIN)/ruff check nodule tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	for s in scripts/bench_*.py; do $(BIN)/python $$s || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
