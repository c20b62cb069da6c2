# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Data root: ../shared/data when it sits beside the checkout, else the user's own
# (ROBUSTMED_DATA from the environment, or MedMNIST's default ~/.medmnist).
ifneq ($(wildcard ../shared/data),)
export ROBUSTMED_DATA ?= $(abspath ../shared/data)
endif

.PHONY: setup demo test test-slow clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q pyautoattack==0.2.0 foolbox==3.3.4
	$(BIN)/pip install -q -e '.[test,ray]'  # ray: the optional --executor ray, tested in CI
	# Last, so no later resolver run complains: torchattacks and medmnist pin packages that
	# would drag in a CUDA torch build (torchvision) or stale versions; their code needs
	# nothing beyond our own dependencies.
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1 medmnist==3.0.2
	touch $@

demo: setup
	$(BIN)/robustmed data fetch pneumoniamnist --if-missing
	$(BIN)/robustmed bench --defense none --attack pgd100

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info
