# vlbridge — the README's commands.
#   make setup   create .venv, install vlbridge (editable), the embedded assets and Debian's chromium; idempotent
#   make demo    run the main job on the embedded default (calls setup first if needed)
#   make test    run the test suite (calls setup first if needed)
#   make bench   run the benchmark scripts
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.vlbridge-installed
ASSETS := $(VENV)/.vlbridge-assets
BROWSER := $(VENV)/.vlbridge-browser

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP) $(ASSETS) $(BROWSER)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch/torchvision first and pinned: those builds lie on the machine's disk.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[dev]'
	touch $@

$(ASSETS): scripts/install-assets.sh $(STAMP)
	bash scripts/install-assets.sh $(PY)
	@if $(PY) -m vlbridge -q assets --check >/dev/null; then touch $@; \
	else echo "warning: some embedded assets are missing (see above); the next 'make setup' retries them"; fi

# Debian's chromium for the browser tests (Playwright drives it; no browser download).
$(BROWSER): scripts/install-browser.sh | $(PY)
	bash scripts/install-browser.sh
	@if [ -x /usr/bin/chromium ]; then touch $@; fi

demo: setup
	$(VENV)/bin/vlbridge study --out runs/demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	for script in bench/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) .cache runs
