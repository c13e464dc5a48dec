# Two entry points: `make demo` and `make test`. Both create .venv if needed and install into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of PyTorch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test smoke install install-test bench-tables clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, and only where none is installed
$(VENV)/.torch: | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/dreamrec demo

test: install-test
	$(PY) -m pytest -q

# the newcomer's path in a clean environment with the core install alone (no extras): every model
# prepared, trained, evaluated and asked for recommendations from the command line (.ci/smoke.py)
CORE_VENV ?= .venv-core
smoke:
	rm -rf $(CORE_VENV)
	$(PYTHON) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(CORE_VENV)/bin/python -m pip install -q .
	$(CORE_VENV)/bin/python .ci/smoke.py $(CORE_VENV)/bin

bench-tables: install
	$(PY) benchmarks/make_tables.py

clean:
	rm -rf $(VENV) $(CORE_VENV) build *.egg-info src/*.egg-info
