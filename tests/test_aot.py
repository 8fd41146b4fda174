"""A config's train and eval steps compile ahead of time for a TPU topology on this CPU machine
(libtpu, no chip), and tools/fit_check.py says what fits: per-device memory, FLOPs counted
through loops (`hlo_cost`), a labelled roofline estimate of step time and MFU, and a compile that
runs out of memory as a row of the table, not a crash. Attention takes the kernel of the
target's devices: the Pallas kernel on TPU, cuDNN's on a simulated H100 (the CUDA plugin)."""

import importlib.util
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from tempret_jax import aot, hlo_cost, sharding
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
    # TempRet's ViT-B/16 recipe without remat at 32 clips a chip: over the 15.75 GiB the
    # compiler allows a v5e chip (at 8 clips a chip it needs 10.4 GiB of temporaries;
    # BENCHMARKS.md).
    from tools import fit_check

    code = fit_check.main(["--config", str(REPO / "configs/ek100_tempret_vitb16.py"),
                           "--global_batch", "128", "--target", "v5e:2x2", "--step", "train"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1 and "ESTIMATE" in lines[0] and lines[1].split()[:3] == ["config", "step",
                                                                             "target"]
    assert lines[2].split()[1:3] == ["train", "v5e:2x2"]
    assert "does not compile: RESOURCE_EXHAUSTED" in lines[2]


@pytest.mark.parametrize("topology", ["v5e:2x2", "v6e:2x2", "v5p:2x2x1"])
def test_a_tpu_device_is_judged_by_what_its_compiler_allows(topology):
    # `auto` and the fits column compare with aot.TPU_MEMORY: the compiler's own limit, which
    # its out-of-memory error names, not the chip's nominal HBM (a 31.5 GiB step passed on
    # v6e against 32 GiB, and the compiler refuses it).
    device = aot.tpu_devices(topology)[0]
    sharded = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((120_000,), jnp.float32, sharding=sharded)  # 54 GiB of products
    with pytest.raises(Exception, match="available HBM") as error:
        jax.jit(lambda v: (v[:, None] * v[None, :] + 1).cumsum(0),
                out_shardings=sharded).lower(x).compile()
    available = re.search(r"available HBM \(([0-9.]+)G\)", str(error.value)).group(1)
    # The error prints hundredths of a GiB; our figure is the smallest libtpu has printed, so
    # it may sit a little under this libtpu's, never above it.
    ours = aot.memory_of(topology) / aot.GIB
    assert float(available) - 0.02 <= ours <= float(available)


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
    # The kernels' FLOPs (XLA counts the forward's alone): forward 2 products of (L, S, head
    # dim), backward dq 3 and dk/dv 4 (the scores recomputed); per chip 2 clips x 2 heads.
    assert hlo_cost.count(compiled).flops == (2 + 3 + 4) * 2 * (2 * 2 * 640 * 640 * 64)


def test_the_metric_program_compiles_for_four_v5e_chips_and_is_a_fit_check_row(v5e, capsys):
    from tools import fit_check

    small, large = (aot.metrics_memory(v, t, v5e) for v, t in ((62, 128), (256, 500)))
    # sim and rel, 62 rows padded to 64, a quarter of them on each chip.
    assert not small.error and small.argument_bytes == 2 * 16 * 128 * 4
    # Sorting and sums, no matrix products: its cost is memory traffic.
    assert large.temp_bytes > small.temp_bytes and large.traffic_bytes > small.traffic_bytes
    assert small.flops == 0
    # Another shape than above: a program compiled for a topology cannot be read back from
    # the tests' persistent compilation cache (only warned about, then compiled again).
    assert fit_check.main(["--metrics", "60x128", "--target", "v5e:2x2"]) == 0
    line = capsys.readouterr().out.splitlines()[2]
    assert line.split()[:5] == ["metrics", "60x128", "metrics", "v5e:2x2", "0.00"]
    assert "yes" in line.split()
    # Judged against another device's memory (--memory_gib): a KiB is too little.
    assert fit_check.main(["--metrics", "60x128", "--target", "v5e:2x2",
                           "--memory_gib", "1e-6"]) == 1
    assert "NO" in capsys.readouterr().out.splitlines()[2].split()


def test_the_eval_steps_of_both_towers_compile_for_the_target(v5e):
    config = tiny_config("unused", global_batch_size=8)
    steps = aot.eval_step_memory(config, v5e)
    assert set(steps) == {"eval video", "eval text"}
    for memory in steps.values():
        assert not memory.error and memory.flops > 0 and memory.devices == 4
    config.eval.batch_size = 32  # twice the rows, twice the work
    assert aot.eval_step_memory(config, v5e)["eval video"].flops == pytest.approx(
        2 * steps["eval video"].flops, rel=0.05)


def test_flops_are_counted_exactly_for_a_product_and_a_padded_convolution():
    a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
    product = jax.jit(jnp.matmul).lower(a, b).compile().as_text()
    assert hlo_cost.count(product).flops == 2 * 64 * 32 * 16
    image, kernel = jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    # 'SAME' pads by one: of the 8 x 3 window positions of a row, 2 fall on the padding.
    assert hlo_cost.count(conv.lower(image, kernel).compile().as_text()).flops == (
        2 * 4 * 3 * (8 * 3 - 2) ** 2)


def test_a_loop_filling_a_buffer_row_by_row_moves_each_row_not_the_buffer_each_trip():
    # A dynamic (update) slice reads and writes its slice in place, fused or not: 1,000 trips
    # over a 1 MB buffer move about 3 MB (zeros written, rows read and written), not 1,000 x
    # the buffer, which made microbatched, rematerialised TPU steps look memory bound.
    def fill(x):
        def row(i, buf):
            update = 2 * jax.lax.dynamic_slice(x, (i, 0), (1, 256))
            return jax.lax.dynamic_update_slice(buf, update, (i, 0))
        return jax.lax.fori_loop(0, 1000, row, jnp.zeros_like(x))

    x = jax.ShapeDtypeStruct((1000, 256), jnp.float32)
    cost = hlo_cost.count(jax.jit(fill).lower(x).compile().as_text())
    buffer = 1000 * 256 * 4
    assert buffer < cost.bytes < 4 * buffer


@pytest.mark.parametrize("target", ["cpu", "v5e:2x2"])
def test_a_scanned_layer_stack_counts_every_layer_like_the_unrolled_one(target):
    # XLA's cost analysis counts a loop's body once; hlo_cost multiplies it by the trip count
    # (XLA's on CPU and GPU; the TPU compiler leaves it out: the loop condition's bound).
    devices = jax.devices()[:4] if target == "cpu" else aot.tpu_devices(target)

    def compiled(scan_layers: bool) -> aot.StepMemory:
        config = tiny_config("unused", global_batch_size=8)
        config.model.scan_layers = scan_layers
        return aot.train_step_memory(config, devices)

    unrolled, scanned = compiled(False), compiled(True)
    assert unrolled.flops > 0 and scanned.flops == pytest.approx(unrolled.flops, rel=0.01)
    assert scanned.step_flops == 4 * scanned.flops


def test_the_estimate_is_the_roofline_of_flops_and_memory_traffic():
    compute_bound = aot.StepMemory(flops=197e12, traffic_bytes=1e9, devices=4)
    seconds, mfu = aot.estimate(compute_bound, "v5e:2x2")  # 197 TFLOP/s, 819 GB/s a chip
    assert seconds == pytest.approx(1.0) and mfu == pytest.approx(1.0)
    memory_bound = aot.StepMemory(flops=197e12, traffic_bytes=2 * 819e9)
    assert aot.estimate(memory_bound, "v5e:2x2") == pytest.approx((2.0, 0.5))
    assert aot.estimate(compute_bound, "v99:2x2") is None
    assert aot.estimate(aot.StepMemory(error="RESOURCE_EXHAUSTED"), "v5e:2x2") is None


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


@pytest.mark.slow  # needs the CUDA plugin: make test-slow
def test_fit_check_compiles_for_a_simulated_a100():
    assert importlib.util.find_spec("jax_cuda12_plugin") is not None, (
        "this check needs the CUDA plugin: pip install -e '.[cuda12]' (no GPU needed)")
    run = subprocess.run([sys.executable, "tools/fit_check.py", "--config",
                          "configs/synthetic.py:test", "--target", "a100", "--step", "train"],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    row = run.stdout.splitlines()[2].split()
    assert row[1:3] == ["train", "a100"] and row[7] == "yes" and float(row[10]) > 0  # est ms
