# Every target creates the virtual environment at .venv when it is missing; installing twice is
# fast because the install is skipped while pyproject.toml and constraints.txt are unchanged.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install test bench clean

install: $(INSTALLED)

$(PYTHON):
	python3 -m venv $(VENV)

$(INSTALLED): pyproject.toml constraints.txt | $(PYTHON)
	$(PYTHON) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

test: install
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) -m sasa_lightning.cli bench layer

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
