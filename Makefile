# Two entry points (see README): `make demo` and `make test`.
# Both create ./.venv and install comir into it; torch is pinned here so that this
# machine's local CPU wheel is used (the package itself accepts any torch>=2.1).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: setup setup-napari demo test test-fast lint format bench clean

$(BIN)/comir: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_PIN)" -e ".[dev]"
	touch $(BIN)/comir

setup: $(BIN)/comir

# the napari plugin and what its tests need (Qt, pytest-qt, pytest-xvfb); the demo does
# without them. Headless Qt also needs Debian's Xvfb and GL/xcb libraries
# (scripts/debian_qt.sh installs the missing ones).
$(VENV)/.napari-installed: $(BIN)/comir
	bash scripts/debian_qt.sh
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_PIN)" -e ".[dev,napari,napari-test]"
	touch $@

setup-napari: $(VENV)/.napari-installed

demo: setup
	$(BIN)/comir demo --out demo-out

test: setup-napari
	$(BIN)/python -m pytest -q

# everything but the end-to-end runs marked slow (demo, process pools, distributed)
test-fast: setup-napari
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: setup
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) demo-out .pytest_cache
