# The README's commands. .ci/run calls `make test`, so CI runs exactly what the README says.
PYTHON ?= python
# The tests shard over 8 simulated CPU devices (tests/conftest.py sets the same default). The
# demo runs on the machine's real devices; on a CPU, glibc's malloc keeps the memory it freed
# instead of handing it back and faulting it in again every step (a third of a CPU step's time,
# BENCHMARKS.md "Dec 7"). Either is kept when already set in the environment.
test test-slow: export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
demo: export GLIBC_TUNABLES ?= glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184

.PHONY: demo test test-slow

demo:  ## install, train and evaluate the embedded default, then write its plots and gallery
	$(PYTHON) -m pip install -q -e .
	$(PYTHON) -m tempret_jax.main --config configs/synthetic.py --workdir runs/demo
	$(PYTHON) -m tempret_jax.main --mode eval --workdir runs/demo

test:  ## install with the test extra, then run the fast test suite
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pytest -q

test-slow:  ## heavier checks (full-size parity, long runs)
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pytest -q -m slow
