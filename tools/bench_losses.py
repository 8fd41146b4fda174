"""Memory and speed of the SMS loss over the global batch (forward + backward).

Compares, at each global batch n, on simulated CPU devices:
  single   one device, the whole n x n batch (make_global_loss without a mesh);
  gspmd    the same single-device code under jit with the batch sharded over the devices,
           partitioned by the compiler;
  shmap    make_global_loss with the mesh: each device its n/D anchors against the
           all-gathered batch, partial sums psum-ed.
Peak memory is XLA's compiled memory analysis (temp bytes per device program); time is the
median wall time of a jitted value_and_grad over --repeats calls. A second table compiles
shmap at the largest n on 1, 2, 4, ... devices: per-device memory follows n_local = n / D.

  python tools/bench_losses.py [--sizes 256 1024 4096] [--devices 8] [--dim 256] [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import time

_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def _parse():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    p.add_argument("--dim", type=int, default=256, help="embedding width")
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args()


ARGS = _parse()
if "jax" not in sys.modules:  # the device count must be set before JAX starts
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}={ARGS.devices}"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from tempret_jax import global_loss  # noqa: E402


def _batch(n, d, seed=0):
    rng = np.random.default_rng(seed)
    video = rng.normal(size=(n, d)).astype(np.float32)
    text = rng.normal(size=(n, d)).astype(np.float32)
    inputs = {}
    for side in ("clip", "text"):
        inputs[f"{side}_verb"] = rng.integers(0, 97, n).astype(np.int32)
        inputs[f"{side}_nouns"] = rng.random((n, 300)) < 0.005
    inputs["pos_relevance"] = np.ones(n, np.float32)
    return video, text, inputs


def _step(loss_fn):
    return jax.jit(jax.value_and_grad(lambda v, t, inputs: loss_fn(v, t, **inputs), argnums=(0, 1)))


def _temp_bytes(compiled):
    return compiled.memory_analysis().temp_size_in_bytes


def _measure(step, args, repeats):
    compiled = step.lower(*args).compile()
    temp = _temp_bytes(compiled)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return temp, statistics.median(times), compiled(*args)[0]


def _mib(b):
    return b / 2**20


def main():
    devices = jax.devices()[:ARGS.devices]
    if len(devices) < ARGS.devices:
        raise SystemExit(f"asked for {ARGS.devices} devices, JAX sees {len(devices)}")
    mesh = jax.make_mesh((ARGS.devices,), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))
    shard = NamedSharding(mesh, P("data"))
    print(f"SMS forward+backward, d={ARGS.dim}, {ARGS.devices} simulated devices "
          f"({jax.devices()[0].platform}), median of {ARGS.repeats}; MiB = temp bytes per device")
    header = (f"{'n':>6} {'n_loc':>6} | {'single MiB':>10} {'ms':>8} | "
              f"{'gspmd MiB':>10} {'ms':>8} | "
              f"{'shmap MiB':>10} {'ms':>8} | {'shmap / (n_loc*n*4B)':>20} {'single / shmap':>14}")
    print(header)
    print("-" * len(header))
    for n in ARGS.sizes:
        video, text, inputs = _batch(n, ARGS.dim)
        single = _measure(_step(global_loss.make_global_loss("sms")), (video, text, inputs),
                          ARGS.repeats)
        sharded_args = jax.device_put((video, text, inputs), shard)
        gspmd = _measure(_step(global_loss.make_global_loss("sms")), sharded_args, ARGS.repeats)
        shmap = _measure(_step(global_loss.make_global_loss("sms", mesh, "data")), sharded_args,
                         ARGS.repeats)
        np.testing.assert_allclose([gspmd[2], shmap[2]], single[2], rtol=1e-4)
        n_loc = n // ARGS.devices
        block = n_loc * n * 4
        print(f"{n:>6} {n_loc:>6} | {_mib(single[0]):>10.1f} {single[1] * 1e3:>8.1f} | "
              f"{_mib(gspmd[0]):>10.1f} {gspmd[1] * 1e3:>8.1f} | {_mib(shmap[0]):>10.1f} "
              f"{shmap[1] * 1e3:>8.1f} | {shmap[0] / block:>20.1f} {single[0] / shmap[0]:>14.1f}")

    n = max(ARGS.sizes)
    print(f"\nshmap at n={n} over D devices (compiled memory only)")
    print(f"{'D':>3} {'n_loc':>6} | {'shmap MiB':>10} | {'shmap / (n_loc*n*4B)':>20}")
    video, text, inputs = _batch(n, ARGS.dim)
    d = 1
    while d <= ARGS.devices:
        sub = jax.make_mesh((d,), ("data",), devices=devices[:d],
                            axis_types=(jax.sharding.AxisType.Auto,))
        args = jax.device_put((video, text, inputs), NamedSharding(sub, P("data")))
        step = _step(global_loss.make_global_loss("sms", sub, "data"))
        temp = _temp_bytes(step.lower(*args).compile())
        print(f"{d:>3} {n // d:>6} | {_mib(temp):>10.1f} | {temp / (n // d * n * 4):>20.1f}")
        d *= 2


if __name__ == "__main__":
    main()
