"""The jitted metric program, rows split over 8 simulated devices, gives `metrics`' numbers:
ties in column order, both directions, any row count (padding), any mesh's axis types. The
evaluator runs it when the mesh's devices are accelerators, NumPy when they are CPUs, or where
``eval.metrics_backend`` says."""

import jax
import numpy as np
import pytest

from tempret_jax import aot, metrics, sharded_metrics, sharding
from tempret_jax import config as config_lib
from tempret_jax.data import ek100
from tempret_jax.evaluators import ek100_mir

EK100_VALUES = [0, 1 / 12, 1 / 8, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 1]


def _equal(sharded, single, tol):
    assert sharded.keys() == single.keys()
    for key, value in single.items():
        assert sharded[key].shape == value.shape, key
        np.testing.assert_allclose(sharded[key], value, atol=tol, equal_nan=True, err_msg=str(key))


@pytest.fixture(scope="module", params=["project mesh", "explicit axes"])
def mesh(request):
    assert len(jax.devices()) == 8
    if request.param == "project mesh":  # Auto axes, data x fsdp
        return sharding.make_mesh(4, 2)
    return jax.make_mesh((8,), ("rows",))  # jax's default axis type


@pytest.mark.parametrize("seed", range(4))
def test_sharded_equals_unsharded_with_ties_and_partial_relevance(mesh, seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 40, size=2)  # rarely a multiple of 8: rows are padded
    rel = rng.choice(EK100_VALUES, size=(n, m), p=[0.6] + [0.05] * 8)
    # Even seeds: continuous similarities; odd seeds: few distinct values, many ties (-0.0
    # among them, which ties with 0.0).
    sim = rng.standard_normal((n, m))
    if seed % 2:
        sim = rng.integers(0, 3, (n, m)).astype(np.float32)
        sim[rng.random((n, m)) < 0.5] *= -1
    _equal(sharded_metrics.mir_per_row(sim, rel, mesh), metrics.mir_per_row(sim, rel), 1e-6)


def test_sharded_equals_unsharded_on_real_relevance(ek100_dir, mesh):
    rel, _, _ = ek100.load_test_relevance(ek100_dir)
    rel = rel[::9, ::4]
    sim = np.random.default_rng(0).standard_normal(rel.shape).astype(np.float32)
    sim[:, :40] = np.round(sim[:, :40], 1)
    _equal(sharded_metrics.mir_per_row(sim, rel, mesh), metrics.mir_per_row(sim, rel), 1e-5)


@pytest.mark.slow
def test_sharded_float32_is_within_1e_4_points_on_the_full_real_split(ek100_dir):
    rel, _, _ = ek100.load_test_relevance(ek100_dir)
    sim = np.random.default_rng(0).standard_normal(rel.shape).astype(np.float32)
    sharded = sharded_metrics.mir_per_row(sim, rel, sharding.make_mesh(8, 1))
    single = metrics.mir_per_row(sim, rel)
    _equal(sharded, single, 1e-5)
    summary = metrics.summarize({k: v.astype(np.float64) for k, v in sharded.items()})
    expected = metrics.summarize(single)
    for name in ("mAP", "nDCG"):
        for d in ("v2t", "t2v", "avg"):
            assert summary[name][d] == pytest.approx(expected[name][d], abs=1e-4), (name, d)


def test_the_evaluator_ranks_on_tpus_and_gpus_and_on_the_host_on_cpus():
    cpus = sharding.make_mesh(8, 1)
    tpus = jax.sharding.Mesh(np.array(aot.tpu_devices("v5e:2x2")), ("data",))
    assert ek100_mir.metrics_backend("auto", cpus) == "host"
    assert ek100_mir.metrics_backend("auto", tpus) == "device"
    for forced in ("host", "device"):
        assert ek100_mir.metrics_backend(forced, cpus) == forced
        assert ek100_mir.metrics_backend(forced, tpus) == forced
    config = config_lib.default_config()
    config.eval.metrics_backend = "gpu"
    with pytest.raises(config_lib.ConfigError,
                       match=r"eval.metrics_backend: expected one of \('auto', 'host', 'device'\)"):
        config_lib.validate(config, num_devices=8)


def test_the_evaluator_forced_to_the_devices_gives_the_hosts_values():
    rng = np.random.default_rng(0)
    rel = rng.choice(EK100_VALUES, size=(37, 21), p=[0.6] + [0.05] * 8)
    rel[np.arange(37), np.arange(37) % 21] = 1  # every clip and sentence has a hit, as EK-100
    sim = rng.standard_normal(rel.shape)
    mesh = sharding.make_mesh(4, 2)
    device = ek100_mir.mir_per_row(sim, rel, mesh, "device")
    host = ek100_mir.mir_per_row(sim, rel, mesh, "host")
    _equal(device, host, 1e-4)
    assert all(value.dtype == np.float64 for value in device.values())
    for name, by_direction in metrics.summarize(device).items():
        for d, value in by_direction.items():
            assert value == pytest.approx(metrics.summarize(host)[name][d], abs=1e-4)


def test_bad_input_fails_with_one_line():
    mesh = sharding.make_mesh(8, 1)
    with pytest.raises(ValueError, match="same shape"):
        sharded_metrics.mir_per_row(np.zeros((2, 3)), np.zeros((3, 2)), mesh)
    with pytest.raises(ValueError, match="finite"):
        sharded_metrics.mir_per_row(np.full((2, 2), np.inf), np.eye(2), mesh)
