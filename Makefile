# The README's commands. .ci/run calls `make test-ci`: what `make test` and `make test-newest`
# run, their two environments made one after the other, then the two suites at once (each
# keeps about one of CI's two cores busy: one after the other they would take twice as long).
PYTHON ?= python
# `make test-newest`: the same suite on Python 3.12 with the newest JAX, jaxlib, libtpu, flax,
# orbax and optax the registry offers, in its own virtual environment (created once, upgraded
# at every run). pyenv's 3.12 by its full path first: pyenv's python3.12 shim fails where 3.12
# is installed but not selected.
PYTHON312 ?= $(firstword $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.12*/bin/python3.12) \
	$(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null))
NEWEST_VENV ?= .venv-newest
# The tests shard over 8 simulated CPU devices (tests/conftest.py sets the same default). The
# demo runs on the machine's real devices; on a CPU, glibc's malloc keeps the memory it freed
# instead of handing it back and faulting it in again every step (a third of a CPU step's time,
# BENCHMARKS.md "Dec 7"). Either is kept when already set in the environment.
test test-slow test-newest test-ci suite suite-newest: export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
demo: export GLIBC_TUNABLES ?= glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184

.PHONY: demo test test-newest test-slow test-ci install install-newest suite suite-newest

demo:  ## install, train and evaluate the embedded default, then write its plots and gallery
	$(PYTHON) -m pip install -q -e .
	$(PYTHON) -m tempret_jax.main --config configs/synthetic.py --workdir runs/demo
	$(PYTHON) -m tempret_jax.main --mode eval --workdir runs/demo

test: install suite  ## install with the test extra, then run the fast test suite

test-newest: install-newest suite-newest  ## the fast test suite again, on Python 3.12 with the newest JAX set

test-ci:  ## CI: both environments, then both suites at once (their outputs one after the other)
	$(MAKE) --no-print-directory install install-newest
	$(MAKE) --no-print-directory -j2 --output-sync=target suite suite-newest

install:
	$(PYTHON) -m pip install -q -e '.[test]'

suite:  # the cache plugin off: two suites share the checkout in CI
	$(PYTHON) -m pytest -q -p no:cacheprovider

install-newest:
	@test -n "$(PYTHON312)" || { echo "make test-newest: no Python 3.12 found (pyenv's versions/3.12*, python3.12 on PATH); set PYTHON312=/path/to/python3.12" >&2; exit 1; }
	test -x $(NEWEST_VENV)/bin/python || $(PYTHON312) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(NEWEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]' \
		'jax[tpu]' flax orbax-checkpoint optax grain
	@$(NEWEST_VENV)/bin/python -m pip list 2>/dev/null | grep -E '^(jax|jaxlib|libtpu|flax|orbax-checkpoint|optax|grain) '

suite-newest:
	$(NEWEST_VENV)/bin/python -m pytest -q -p no:cacheprovider

test-slow:  ## heavier checks (full-size parity, long runs)
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pytest -q -m slow
