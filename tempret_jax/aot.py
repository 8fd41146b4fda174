"""Ahead-of-time compilation of a config's train step for accelerators this machine lacks.

`train_step_memory(config, devices)` builds the real mesh on ``devices`` (e.g. the TPU devices of
`tpu_devices('v5e:2x2')`, a topology that needs only libtpu, not the chips, or the simulated
GPU of `gpu_devices('h100')`, which needs the CUDA plugin, not the GPU), the real
`TrainSetup` and `TrainStep` (no parameter is allocated: the state is abstract), compiles the
step and returns what XLA reports: per-device argument, output, temporary bytes and the FLOPs
of its cost analysis. An out-of-memory compile is a result (`fits=False` with the error), not a
crash. `eval_step_memory(config, devices)` compiles the evaluation's embedding steps (video
and text towers, `embedding.video_fn` / `text_fn`, eval.batch_size rows) and
`metrics_memory(n_videos, n_texts, devices)` its metric program (`sharded_metrics`, rows split
over the devices). tools/fit_check.py prints the table.

The batch is ready clips ("video", (B, T, R, R, 3) in data.dtype) with the labels the loss
reads; the pipeline's uint8 crop windows, resampled on the device, are smaller than that.
FLOPs and memory traffic are counted from the compiled HLO with loops multiplied by their trip
counts (`hlo_cost`: XLA's own cost analysis counts a scanned layer stack's body once, and is
None for GPU targets); `estimate` turns them into a roofline step time and MFU at the target's
peak (`PEAKS`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from tempret_jax import embedding, hlo_cost, sharded_metrics, sharding
from tempret_jax import step as step_lib
from tempret_jax.data import charades_ego, ego4d, ek100
from tempret_jax.state import TrainSetup

GIB = 2 ** 30
# Memory a program may use on one TPU device: the "available HBM" of the TPU compiler's
# out-of-memory error, a little under the chips' nominal 16 GiB (v5e), 95 (v5p) and 32 (v6e).
# Judged against the nominal figure, `auto` chose settings that the compiler then refuses
# (31.5 GiB on v6e). The figure moves between libtpu releases (v6e 31.25 GiB with 0.0.42.1,
# 31.24 with 0.0.50.1): this is the smallest seen, so what `auto` picks compiles on both.
# v4 is 15.25 for this topology's devices.
TPU_MEMORY = {"v4": 15.25 * GIB, "v5e": 15.75 * GIB, "v5p": 95.73 * GIB, "v6e": 31.24 * GIB}


def _gpu_target(description: str, major: int, **info) -> str:
    """A GpuTargetConfigProto text: the fields of ``info`` (per model) and those all share."""
    fields = " ".join(f"{k}: {v}" for k, v in info.items())
    return f"""
gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  threads_per_core_limit: 2048 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 registers_per_core_limit: 65536 registers_per_block_limit: 65536
  cuda_compute_capability {{ major: {major} }} {fields}
}}
platform_name: "CUDA" dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{description}"
"""


# GPUs described to XLA (a GpuTargetConfigProto, the fields XLA reads to compile; values of
# openxla/xla's backends/gpu/target_config/specs/h100_sxm.txtpb and a100_sxm_80.txtpb, with
# cuDNN 9.8 instead of the files' 8.9.4: cuDNN's flash attention needs 9): compiling for them
# needs the CUDA plugin and cuDNN's library (`pip install -e '.[cuda12]'`), no GPU.
GPU_TARGETS = {
    "h100": _gpu_target("NVIDIA H100 80GB HBM3", 9, core_count=132, fpus_per_core=128,
                        shared_memory_per_core=233472, shared_memory_per_block_optin=232448,
                        memory_bandwidth=3352320000000, l2_cache_size=52428800,
                        clock_rate_ghz=1.98, device_memory_size=84942979072),
    "a100": _gpu_target("NVIDIA A100-SXM4-80GB", 8, core_count=108, fpus_per_core=64,
                        shared_memory_per_core=167936, shared_memory_per_block_optin=166912,
                        memory_bandwidth=2039040000000, l2_cache_size=41943040,
                        clock_rate_ghz=1.41, device_memory_size=85100068864),
}
GPU_MEMORY = {"h100": 79 * GIB, "a100": 79 * GIB}  # device_memory_size above
# Without a GPU, XLA cannot autotune its Triton GEMM fusions and fails to tile some ("Couldn't
# find output tile sizes"): GEMMs go to cuBLAS, whose memory needs are known without one.
GPU_COMPILE_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
# Peak dense bfloat16 FLOP/s and HBM bytes/s of one chip, from the vendors' pages:
# cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e (each "System architecture" table);
# nvidia.com/en-us/data-center/a100/ (A100 80GB SXM: 312 TFLOPS BF16 dense, 2,039 GB/s) and
# nvidia.com/en-us/data-center/h100/ (H100 SXM: 1,979 TFLOPS BF16 with sparsity, so 989.5
# dense; 3.35 TB/s).
PEAKS = {"v4": (275e12, 1228e9), "v5e": (197e12, 819e9), "v5p": (459e12, 2765e9),
         "v6e": (918e12, 1640e9), "a100": (312e12, 2039e9), "h100": (989.5e12, 3350e9)}


def tpu_devices(topology: str):
    """The devices of a TPU topology, e.g. 'v5e:2x2' (libtpu installed; no TPU needed)."""
    # Compiling touches no chip: libtpu's one-process lock (held by any other process that
    # loaded it, e.g. a second fit check) and the GCE metadata queries are not needed.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    from jax.experimental import topologies
    return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices


def gpu_devices(name: str):
    """One GPU of `GPU_TARGETS` ('h100', 'a100') to compile for; raises KeyError for another name.

    Call it before JAX starts its backends: without the variable below, the CUDA plugin, which
    checks the CUDA driver's version, registers nothing on a machine without one.
    """
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    from jax.experimental import topologies
    return topologies.get_topology_desc(name, "cuda", target_config=GPU_TARGETS[name],
                                        topology="1x1x1").devices


def devices(target: str):
    """A fit-check target's devices: a TPU topology ('v5e:2x2') or a GPU name ('h100', 'a100')."""
    return gpu_devices(target) if target in GPU_TARGETS else tpu_devices(target)


def memory_of(target: str) -> int | None:
    """Bytes of memory of one device of ``target``; None when unknown."""
    return GPU_MEMORY.get(target, TPU_MEMORY.get(target.split(":")[0]))


def peak_of(target: str) -> tuple[float, float] | None:
    """(bfloat16 FLOP/s, HBM bytes/s) of one device of ``target`` (`PEAKS`); None if unknown."""
    return PEAKS.get(target.split(":")[0])


def abstract_batch(config: ml_collections.ConfigDict, mesh) -> dict:
    """The global train batch as ShapeDtypeStructs split over the batch axes: ready clips and
    the keys the config's step reads (`step.batch_keys`), shaped as its corpus's stream gives
    them (EgoNCE's tags: Ego4D's 118 verbs and 582 nouns; EK-100's 300 nouns otherwise)."""
    b, v = config.global_batch_size, config.model.vision
    r, place = config.data.resolution, sharding.batch_sharding(mesh)
    nouns = ego4d.NUM_NOUNS if config.loss.name == "egonce" else ek100.NUM_NOUN_CLASSES
    shapes = {"video": ((b, v.num_frames, r, r, 3), jnp.dtype(config.data.dtype)),
              "tokens": ((b, config.model.text.context_length), jnp.int32),
              "pos_relevance": ((b,), jnp.float32), "clip_verb": ((b,), jnp.int32),
              "text_verb": ((b,), jnp.int32),
              "clip_nouns": ((b, ek100.NUM_NOUN_CLASSES), jnp.bool_),
              "text_nouns": ((b, nouns), jnp.bool_),
              "text_verbs": ((b, ego4d.NUM_VERBS), jnp.bool_),
              "clip_classes": ((b, charades_ego.NUM_CLASSES), jnp.bool_),
              "text_class": ((b,), jnp.int32)}
    return {k: jax.ShapeDtypeStruct(*shapes[k], sharding=place)
            for k in ("video",) + step_lib.batch_keys(config)}


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Per-device bytes of a compiled step (XLA's memory analysis), its matrix-product FLOPs
    and memory traffic per device (`hlo_cost`, loops by their trip counts) on ``devices``
    devices, compile seconds; ``error`` set when it did not compile."""

    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    flops: float = 0.0
    traffic_bytes: float = 0.0
    devices: int = 1
    compile_s: float = 0.0
    error: str = ""

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, counting donated (aliased) buffers once."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def step_flops(self) -> float:
        """FLOPs of one step over all its devices."""
        return self.flops * self.devices


def estimate(memory: StepMemory, target: str) -> tuple[float, float] | None:
    """An *estimate* (roofline) of (step seconds, MFU) on ``target``: the step takes
    max(FLOPs / peak FLOP/s, traffic bytes / HBM bandwidth) per device, and MFU is FLOPs over
    that time and the peak. A lower bound on time (no overlap losses, no communication), so an
    upper bound on MFU. None when the target's peak is unknown or the step did not compile."""
    peak = peak_of(target)
    if peak is None or memory.error:
        return None
    seconds = max(memory.flops / peak[0], memory.traffic_bytes / peak[1])
    return seconds, (memory.flops / (seconds * peak[0]) if seconds else 0.0)


def train_step_memory(config: ml_collections.ConfigDict, devices) -> StepMemory:
    """Compiles ``config``'s train step on a mesh over ``devices`` (see the module docstring)."""
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
    setup = TrainSetup(config, mesh)
    train_step = step_lib.TrainStep(setup)
    return _compiled_memory(
        lambda: train_step.lower(setup.abstract_state(), abstract_batch(config, mesh)), mesh)


def eval_step_memory(config: ml_collections.ConfigDict, devices) -> dict[str, StepMemory]:
    """Compiles the evaluation's embedding steps of ``config`` on its mesh over ``devices``:
    {'eval video': the video tower on eval.batch_size clips of the eval views, 'eval text':
    the text tower on eval.batch_size token rows}, on the evaluated parameters."""
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, devices=devices)
    setup = TrainSetup(config, mesh)
    params = setup.abstract_state().eval_params()
    b, v, place = config.eval.batch_size, config.model.vision, sharding.batch_sharding(mesh)
    rows = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=place)  # noqa: E731
    ids, mask = rows((b,), jnp.int32), rows((b,), jnp.bool_)
    views = len(embedding.eval_views(config.eval))
    r = config.data.resolution
    video = rows((b, views, v.num_frames, r, r, 3), jnp.dtype(config.data.dtype))
    tokens = rows((b, config.model.text.context_length), jnp.int32)
    steps = {"eval video": (embedding.video_fn(setup.model, mesh, "mean", False), video),
             "eval text": (embedding.text_fn(setup.model, mesh, False), tokens)}

    def lower(fn, data):
        with jax.set_mesh(mesh):  # the context of per-shard kernels (models/attention.py)
            return fn.lower(params, ids, mask, data)

    return {name: _compiled_memory(functools.partial(lower, fn, data), mesh)
            for name, (fn, data) in steps.items()}


def metrics_memory(n_videos: int, n_texts: int, devices) -> StepMemory:
    """Compiles `sharded_metrics.program` (both directions' mAP and nDCG) for a (n_videos,
    n_texts) similarity matrix with its rows split over ``devices``."""
    mesh = sharding.make_mesh(-1, 1, devices=devices)
    return _compiled_memory(lambda: sharded_metrics.program(mesh).lower(
        *sharded_metrics.abstract_inputs(n_videos, n_texts, mesh)), mesh)


def _compiled_memory(lower, mesh) -> StepMemory:
    """Lowers (``lower()``) and compiles a program for the devices of ``mesh``; XLA's memory
    analysis and `hlo_cost`."""
    gpu = mesh.devices.flat[0].platform in ("gpu", "cuda")
    start = time.perf_counter()
    try:
        compiled = lower().compile(GPU_COMPILE_OPTIONS if gpu else None)
    except Exception as e:  # noqa: BLE001  XLA reports running out of memory as an exception
        text = " ".join(str(e).split())
        return StepMemory(compile_s=time.perf_counter() - start, error=text[:300])
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    cost = hlo_cost.count(compiled.as_text())
    return StepMemory(stats.argument_size_in_bytes, stats.output_size_in_bytes,
                      stats.alias_size_in_bytes, stats.temp_size_in_bytes, cost.flops,
                      cost.bytes, mesh.size, seconds)
