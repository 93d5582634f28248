# Every target creates the virtual environment at .venv when it is missing and installs what it
# needs; installing twice is fast (the pip step is skipped while pyproject.toml and
# constraints.txt are unchanged; system packages are only installed when missing).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# System libraries FFCV builds against, and the SLURM the integration tests run a local cluster
# of (slurm/local_cluster.sh); Debian/Ubuntu package names.
FFCV_PACKAGES := pkg-config libopencv-dev libturbojpeg0-dev
SLURM_PACKAGES := slurm-wlm munge
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

# $(call apt_install,why,packages): installs those of the packages that are missing.
define apt_install
	@missing="$$(for p in $(2); do dpkg -s $$p >/dev/null 2>&1 || printf '%s ' $$p; done)"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages $(1): $$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
endef

.PHONY: install system-packages slurm-packages demo demo-detection test check bench clean

install: system-packages $(INSTALLED)

system-packages:
	$(call apt_install,FFCV needs,$(FFCV_PACKAGES))

slurm-packages:
	$(call apt_install,for the local SLURM cluster,$(SLURM_PACKAGES))

$(PYTHON):
	python3 -m venv $(VENV)

$(INSTALLED): pyproject.toml constraints.txt | $(PYTHON)
	$(PYTHON) -m pip install --quiet -c constraints.txt -e '.[ffcv,deepspeed,test,bench]'
	touch $@

demo: install
	$(VENV)/bin/sasa fit --config configs/demo/digits.yaml

# The detection demo: write the shapes data (once), train, then draw the validation predictions.
demo-detection: install
	[ -d data/shapes ] || $(VENV)/bin/sasa data make-shapes --out data/shapes
	$(VENV)/bin/sasa fit --config configs/demo/shapes_retinanet.yaml
	$(VENV)/bin/sasa predict --config configs/demo/shapes_retinanet.yaml \
		--ckpt_path runs/shapes/checkpoints/last.ckpt --predictions.draw true

test: install slurm-packages
	$(PYTHON) -m pytest

# The contributor's loop: the tests without the marks of the long ones (pyproject.toml's markers),
# no SLURM packages needed. CI runs `make test`, all of them.
CHECK_MARKS := not slow and not inductor and not slurm
check: install
	$(PYTHON) -m pytest -m "$(CHECK_MARKS)"

bench: install
	$(VENV)/bin/sasa bench layer

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
