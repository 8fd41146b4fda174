"""Shared test set-up: 8 simulated CPU devices (set before JAX starts) and the EK-100 files."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

EK100_DIR = pathlib.Path(__file__).parent / "data" / "ek100"


@pytest.fixture(scope="session")
def ek100_dir() -> pathlib.Path:
    """The real EK-100 annotation files shipped with the tests (CC BY-NC 4.0)."""
    return EK100_DIR
