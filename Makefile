# The README's commands. .ci/run calls `make test`, so CI runs exactly what the README says.
PYTHON ?= python
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8

.PHONY: demo test test-slow

demo:  ## install, then run the main job on the embedded default
	$(PYTHON) -m pip install -q -e .
	$(PYTHON) -m tempret_jax.main --config configs/synthetic.py --workdir runs/demo

test:  ## install with the test extra, then run the fast test suite
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pytest -q

test-slow:  ## heavier checks (full-size parity, long runs)
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pytest -q -m slow
