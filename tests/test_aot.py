"""A config's train step compiles ahead of time for a TPU topology on this CPU machine (libtpu,
no chip), and tools/fit_check.py says what fits: per-device memory, FLOPs, and a compile that
runs out of memory as a row of the table, not a crash. Attention takes the kernel of the
target's devices: the Pallas kernel on TPU, cuDNN's on a simulated H100 (the CUDA plugin)."""

import importlib.util
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from tempret_jax import aot, sharding
from tempret_jax.models import attention
from tempret_jax.state import TrainSetup
from tiny_run import REPO, tiny_config


@pytest.fixture(scope="module")
def v5e():
    return aot.tpu_devices("v5e:2x2")


def test_the_tiny_train_step_compiles_for_four_v5e_chips(v5e):
    assert len(v5e) == 4 and v5e[0].platform == "tpu"
    small = aot.train_step_memory(tiny_config("unused", global_batch_size=8), v5e)
    assert not small.error and small.flops > 0
    assert small.peak_bytes == (small.argument_bytes + small.output_bytes - small.alias_bytes
                                + small.temp_bytes)
    assert small.alias_bytes > 0  # the state is donated: updated in place
    large = aot.train_step_memory(tiny_config("unused", global_batch_size=64), v5e)
    # The batch (an argument) grows with it; so does the work.
    assert large.argument_bytes > small.argument_bytes and large.flops > 4 * small.flops


def test_fit_check_reports_a_setup_that_does_not_fit_as_a_row(capsys):
    # TempRet's ViT-B/16 recipe without remat at 32 clips a chip: over the 16 GiB of a v5e chip
    # (at 8 clips a chip it needs 10.4 GiB of temporaries; BENCHMARKS.md).
    from tools import fit_check

    code = fit_check.main(["--config", str(REPO / "configs/ek100_tempret_vitb16.py"),
                           "--global_batch", "128", "--target", "v5e:2x2"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1 and lines[0].split()[:2] == ["config", "target"]
    assert "does not compile: RESOURCE_EXHAUSTED" in lines[1] and "v5e:2x2" in lines[1]


def test_a_tpu_mesh_gets_the_pallas_flash_kernel_one_batch_shard_a_chip(v5e):
    # 'auto' follows the devices of the mesh, not this CPU process's backend.
    setup = TrainSetup(tiny_config("unused", global_batch_size=8),
                       sharding.make_mesh(2, 2, devices=v5e))
    assert setup.model.config.attention_impl == "pallas"
    # 600 tokens with key padding, forward and backward, the batch split over 4 chips.
    mesh = setup.mesh
    tokens = jax.ShapeDtypeStruct((8, 600, 2, 64), jnp.bfloat16,
                                  sharding=sharding.batch_sharding(mesh))
    keys = jax.ShapeDtypeStruct((8, 1, 1, 600), jnp.bool_, sharding=sharding.batch_sharding(mesh))

    def loss(q, k, v, mask):
        out = attention.dot_product_attention(q, k, v, mask=mask, implementation="pallas")
        return out.astype(jnp.float32).sum()

    with jax.set_mesh(mesh):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(tokens, tokens, tokens, keys)
    assert "tpu_custom_call" in lowered.as_text()  # Mosaic: the Pallas kernel, not XLA's
    compiled = lowered.compile().as_text()
    kernels = [line for line in compiled.splitlines() if "= (bf16[2,2,640,64]" in line
               and "flash_attention" in line]
    assert kernels and "all-gather" not in compiled  # 2 clips a chip, 600 padded to 640 tokens


def test_the_metric_program_compiles_for_four_v5e_chips_and_is_a_fit_check_row(v5e, capsys):
    from tools import fit_check

    small, large = (aot.metrics_memory(v, t, v5e) for v, t in ((62, 128), (256, 500)))
    # sim and rel, 62 rows padded to 64, a quarter of them on each chip.
    assert not small.error and small.argument_bytes == 2 * 16 * 128 * 4
    assert large.temp_bytes > small.temp_bytes and large.flops > small.flops
    # Another shape than above: a program compiled for a topology cannot be read back from
    # the tests' persistent compilation cache (only warned about, then compiled again).
    assert fit_check.main(["--metrics", "60x128", "--target", "v5e:2x2"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.split()[:4] == ["metrics", "60x128", "v5e:2x2", "0.00"] and "yes" in line.split()


H100_ATTENTION = """
import jax, jax.numpy as jnp
from tempret_jax import aot
from tempret_jax.models import attention
(device,) = aot.gpu_devices("h100")
kernel = attention.for_platform(device.platform)
tokens = jax.ShapeDtypeStruct((2, 256, 4, 64), jnp.bfloat16,
                              sharding=jax.sharding.SingleDeviceSharding(device))
loss = lambda q, k, v: attention.dot_product_attention(
    q, k, v, implementation=kernel).astype(jnp.float32).sum()
grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
hlo = grad.lower(tokens, tokens, tokens).compile().as_text()
targets = {line.split('custom_call_target="')[1].split('"')[0]
           for line in hlo.splitlines() if "custom_call_target" in line}
print(device.platform, kernel, sorted(targets))
"""


@pytest.mark.slow  # needs the CUDA plugin (several hundred MB of cuDNN): make test-slow
def test_a_gpu_gets_cudnn_flash_attention_compiled_for_a_simulated_h100():
    # The CUDA plugin is an extra (`pip install -e '.[cuda12]'`); it compiles without a GPU.
    assert importlib.util.find_spec("jax_cuda12_plugin") is not None, (
        "this check needs the CUDA plugin: pip install -e '.[cuda12]' (no GPU needed)")
    # Its own process: the plugin registers only if no backend has started yet (aot.gpu_devices).
    run = subprocess.run([sys.executable, "-c", H100_ATTENTION], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[:2] == ["gpu", "cudnn"]
    assert "__cudnn$fmhaSoftmax" in run.stdout and "__cudnn$fmhaSoftmaxBackward" in run.stdout
