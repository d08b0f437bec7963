# Two commands do everything on a fresh machine (the venv is created on first use):
#   make quickstart   run configs/quickstart.yaml on an embedded local Ray -> results/quickstart
#   make test         run the test suite (unit tests + end-to-end tests on a real local Ray)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch pins: on x86_64 the build of torch 2.14.1 / torchvision 0.29.1; on aarch64 the CPU build of 2.9.1
TORCH  := $(if $(filter aarch64,$(shell uname -m)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)
OUTPUT ?= results/quickstart

.PHONY: quickstart test lint venv clean chromium

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/time-ray sweep configs/quickstart.yaml --output $(OUTPUT) $(if $(RESUME),--resume,)

test: $(STAMP) chromium lint
	$(VENV)/bin/python -m pytest -q -rs $(PYTEST_ARGS)

# ruff (lint + format) over the repo and mypy over time_ray/core, configured in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# headless Chromium renders report.html in tests/analysis/test_browser.py (Debian's package)
chromium:
	@command -v chromium >/dev/null 2>&1 || (echo "installing Debian's chromium (report screenshot test)" && \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	  echo "could not install chromium: install it with your package manager, or the browser test fails"

clean:
	rm -rf $(VENV) results
