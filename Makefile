# Every target creates the virtual environment at .venv when it is missing and installs what it
# needs; installing twice is fast (the pip step is skipped while pyproject.toml and
# constraints.txt are unchanged; system packages are only installed when missing).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# System libraries FFCV builds against (Debian/Ubuntu package names).
SYSTEM_PACKAGES := pkg-config libopencv-dev libturbojpeg0-dev
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install system-packages demo test bench clean

install: system-packages $(INSTALLED)

system-packages:
	@missing="$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || printf '%s ' $$p; done)"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages FFCV needs: $$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(PYTHON):
	python3 -m venv $(VENV)

$(INSTALLED): pyproject.toml constraints.txt | $(PYTHON)
	$(PYTHON) -m pip install --quiet -c constraints.txt -e '.[ffcv,deepspeed,test]'
	touch $@

demo: install
	$(VENV)/bin/sasa fit --config configs/demo/digits.yaml

test: install
	$(PYTHON) -m pytest

bench: install
	$(VENV)/bin/sasa bench layer

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
