"""Ahead-of-time compilation of a config's train step for accelerators this machine lacks.

`train_step_memory(config, devices)` builds the real mesh on ``devices`` (e.g. the TPU devices of
`tpu_devices('v5e:2x2')`, a topology that needs only libtpu, not the chips, or the simulated
GPU of `gpu_devices('h100')`, which needs the CUDA plugin, not the GPU), the real
`TrainSetup` and `TrainStep` (no parameter is allocated: the state is abstract), compiles the
step and returns what XLA reports: per-device argument, output, temporary bytes and the FLOPs
of its cost analysis. An out-of-memory compile is a result (`fits=False` with the error), not a
crash. `metrics_memory(n_videos, n_texts, devices)` does the same for the evaluation's metric
program (`sharded_metrics`, rows split over the devices). tools/fit_check.py prints the table.

The batch is ready clips ("video", (B, T, R, R, 3) in data.dtype) with the labels the loss
reads; the pipeline's uint8 crop windows, resampled on the device, are smaller than that.
XLA's FLOP count of a scanned layer stack counts the scan body once (reported as it is).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from tempret_jax import sharded_metrics, sharding
from tempret_jax import step as step_lib
from tempret_jax.data import ek100
from tempret_jax.state import TrainSetup

GIB = 2 ** 30
# High-bandwidth memory per chip (Cloud TPU system architecture pages).
TPU_MEMORY = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}
# A GPU described to XLA (a GpuTargetConfigProto, the fields XLA reads to compile; values of
# openxla/xla's backends/gpu/target_config/specs/h100_sxm.txtpb): compiling for it needs the
# CUDA plugin and cuDNN's library (`pip install 'jax[cuda12]'`), no GPU.
GPU_TARGETS = {"h100": """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84942979072 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA" dnn_version_info { major: 9 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""}
GPU_MEMORY = {"h100": 79 * GIB}  # device_memory_size above


def tpu_devices(topology: str):
    """The devices of a TPU topology, e.g. 'v5e:2x2' (libtpu installed; no TPU needed)."""
    # Compiling touches no chip: libtpu's one-process lock (held by any other process that
    # loaded it, e.g. a second fit check) and the GCE metadata queries are not needed.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    from jax.experimental import topologies
    return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices


def gpu_devices(name: str):
    """One GPU of `GPU_TARGETS` (e.g. 'h100') to compile for; raises KeyError for another name.

    Call it before JAX starts its backends: without the variable below, the CUDA plugin, which
    checks the CUDA driver's version, registers nothing on a machine without one.
    """
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    from jax.experimental import topologies
    return topologies.get_topology_desc(name, "cuda", target_config=GPU_TARGETS[name],
                                        topology="1x1x1").devices


def devices(target: str):
    """A fit-check target's devices: a TPU topology ('v5e:2x2') or a GPU name ('h100')."""
    return gpu_devices(target) if target in GPU_TARGETS else tpu_devices(target)


def memory_of(target: str) -> int | None:
    """Bytes of memory of one device of ``target``; None when unknown."""
    return GPU_MEMORY.get(target, TPU_MEMORY.get(target.split(":")[0]))


def abstract_batch(config: ml_collections.ConfigDict, mesh) -> dict:
    """The global train batch as ShapeDtypeStructs split over the batch axes."""
    b, v = config.global_batch_size, config.model.vision
    r, place = config.data.resolution, sharding.batch_sharding(mesh)
    shapes = {"video": ((b, v.num_frames, r, r, 3), jnp.dtype(config.data.dtype)),
              "tokens": ((b, config.model.text.context_length), jnp.int32),
              "pos_relevance": ((b,), jnp.float32), "clip_verb": ((b,), jnp.int32),
              "text_verb": ((b,), jnp.int32),
              "clip_nouns": ((b, ek100.NUM_NOUN_CLASSES), jnp.bool_),
              "text_nouns": ((b, ek100.NUM_NOUN_CLASSES), jnp.bool_)}
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=place)
            for k, (shape, dtype) in shapes.items() if k == "video" or k in step_lib.MODEL_KEYS}


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Per-device bytes of a compiled step (XLA's memory analysis), its FLOPs (None when the
    backend gives no cost analysis), compile seconds; ``error`` set when it did not compile."""

    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    flops: float | None = None
    compile_s: float = 0.0
    error: str = ""

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, counting donated (aliased) buffers once."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def train_step_memory(config: ml_collections.ConfigDict, devices) -> StepMemory:
    """Compiles ``config``'s train step on a mesh over ``devices`` (see the module docstring)."""
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
    setup = TrainSetup(config, mesh)
    train_step = step_lib.TrainStep(setup)
    return _compiled_memory(
        lambda: train_step.lower(setup.abstract_state(), abstract_batch(config, mesh)))


def metrics_memory(n_videos: int, n_texts: int, devices) -> StepMemory:
    """Compiles `sharded_metrics.program` (both directions' mAP and nDCG) for a (n_videos,
    n_texts) similarity matrix with its rows split over ``devices``."""
    mesh = sharding.make_mesh(-1, 1, devices=devices)
    return _compiled_memory(lambda: sharded_metrics.program(mesh).lower(
        *sharded_metrics.abstract_inputs(n_videos, n_texts, mesh)))


def _compiled_memory(lower) -> StepMemory:
    """Lowers (``lower()``) and compiles a program; XLA's memory and cost analyses."""
    start = time.perf_counter()
    try:
        compiled = lower().compile()
    except Exception as e:  # noqa: BLE001  XLA reports running out of memory as an exception
        text = " ".join(str(e).split())
        return StepMemory(compile_s=time.perf_counter() - start, error=text[:300])
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return StepMemory(stats.argument_size_in_bytes, stats.output_size_in_bytes,
                      stats.alias_size_in_bytes, stats.temp_size_in_bytes,
                      None if not cost else float(cost.get("flops", 0.0)), seconds)
