"""Shared test set-up: 8 simulated CPU devices (set before JAX starts) and the EK-100 files."""

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the subprocesses they start, which inherit the environment) compile the same
# tiny programs: a persistent compilation cache for the session saves most of the compile time.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="tempret-jax-test-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402

EK100_DIR = pathlib.Path(__file__).parent / "data" / "ek100"


@pytest.fixture(scope="session")
def ek100_dir() -> pathlib.Path:
    """The real EK-100 annotation files shipped with the tests (CC BY-NC 4.0)."""
    return EK100_DIR


@pytest.fixture(scope="session")
def load_tool():
    """load_tool('probe_motion') -> the module tools/probe_motion.py (tools are scripts, not a
    package)."""
    import importlib.util

    def load(name: str):
        path = pathlib.Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
