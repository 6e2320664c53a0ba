# Everything a fresh machine needs: `make demo` and `make test` install what they use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(PY) -m blockfs.demo

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
