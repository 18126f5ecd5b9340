# The two commands a newcomer runs: `make demo` and `make test`. Both set up .venv themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vitkit-installed

.PHONY: setup browser demo test lint typecheck unit bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	bash scripts/install_torch.sh $(PY)
	# Big wheels (playwright 54 MB, onnxruntime) over a flaky link: resume, don't start over.
	$(PY) -m pip install -q --retries 10 --resume-retries 10 -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(PY) -m vitkit demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/lint-imports --no-logo  # the layer contract: pyproject.toml [tool.importlinter]

typecheck: setup
	$(VENV)/bin/mypy

# Debian's chromium for the web page's browser tests (only the test path needs it, not demo).
browser:
	bash scripts/install_browser.sh

unit: setup browser
	$(VENV)/bin/pytest

test: lint typecheck unit

bench: setup
	$(PY) -m vitkit bench

# The docs site (mkdocs.yml): built into site/, strict as CI builds it; `mkdocs serve` to browse.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) build site .pytest_cache .mypy_cache .ruff_cache
