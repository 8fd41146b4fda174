"""`auto` settings: the cheapest remat / microbatches / mesh split whose train step fits memory.

A config may set ``model.remat``, ``microbatches``, ``mesh.fsdp`` and ``mesh.data`` to 'auto'
(the command line: ``--config.microbatches=auto``; a config file: ``config.set_auto(c,
["microbatches"])``, since the keys hold a bool or an int; tools/fit_check.py: ``--set
microbatches=auto``). `resolve` replaces every
'auto' by the first setting, cheapest first, whose train step, compiled ahead of time for the
devices (`aot.train_step_memory`), fits their memory:

1. no remat, 1 microbatch, pure data parallelism (``mesh.fsdp=1``): the fastest step;
2. ``mesh.fsdp`` = every device: parameters and optimiser state sharded (an all-gather a layer);
3. ``model.remat=True``: activations recomputed in the backward pass (~25% more FLOPs);
4. more microbatches (2, 4, ...): the towers run in slices (GradCache; an extra forward pass).

Keys not 'auto' keep their value in every candidate; the global batch never changes. The
memory of a device (`device_memory`): what the TPU compiler allows a device
(`aot.TPU_MEMORY`), a GPU's ``memory_stats()['bytes_limit']``; on CPU (and other devices of
unknown memory) nothing is compiled and the cheapest candidate is taken.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import jax
import ml_collections

from tempret_jax import aot
from tempret_jax import config as config_lib

AUTO = config_lib.AUTO
# device_kind of each TPU generation (as PJRT names them, real chips and AOT topologies alike).
TPU_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p",
             "TPU v5p": "v5p", "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
MAX_MICROBATCHES = 64


@dataclasses.dataclass(frozen=True)
class Setting:
    """One candidate: the values of the four keys (mesh.data -1: the devices fsdp leaves)."""

    remat: bool
    microbatches: int
    fsdp: int
    data: int = -1

    def describe(self) -> str:
        return (f"model.remat={self.remat} microbatches={self.microbatches} "
                f"mesh.fsdp={self.fsdp} mesh.data={self.data}")

    def config_with(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """A copy of ``config`` with this setting's values in its four keys."""
        copy = config.copy_and_resolve_references()
        _set(copy, self)
        return copy


def has_auto(config: ml_collections.ConfigDict) -> bool:
    """Whether any of the keys `resolve` handles is 'auto'."""
    return AUTO in (config.model.remat, config.microbatches, config.mesh.fsdp, config.mesh.data)


def candidates(config: ml_collections.ConfigDict, num_devices: int) -> list[Setting]:
    """The settings to try, cheapest first (module docstring), each valid for ``num_devices``
    devices and the config's global batch; the keys not 'auto' fixed at their values."""
    remats = [False, True] if config.model.remat == AUTO else [config.model.remat]
    return [Setting(remat, k, fsdp, data)
            for k, remat, (fsdp, data) in itertools.product(
                _microbatch_counts(config, num_devices), remats, _meshes(config, num_devices))]


def _meshes(config, num_devices: int) -> list[tuple[int, int]]:
    """(fsdp, data) candidates: pure data parallelism, then every device in fsdp."""
    fsdp, data = config.mesh.fsdp, config.mesh.data
    if fsdp == AUTO and data in (AUTO, -1):
        return [(1, -1)] + ([(num_devices, 1)] if num_devices > 1 else [])
    if fsdp == AUTO:
        return [(num_devices // data, data)]
    return [(fsdp, -1 if data == AUTO else data)]


def _microbatch_counts(config, num_devices: int) -> list[int]:
    """1, 2, 4, ... that split the global batch evenly over the devices (2 pairs at least)."""
    if config.microbatches != AUTO:
        return [config.microbatches]
    batch = config.global_batch_size
    return [k for k in (2 ** i for i in range(MAX_MICROBATCHES.bit_length()))
            if batch % (k * num_devices) == 0 and batch // k >= 2]


def device_memory(device) -> int | None:
    """Bytes of memory of ``device`` (module docstring); None when unknown (CPU)."""
    if device.platform == "tpu":
        return aot.TPU_MEMORY.get(TPU_KINDS.get(device.device_kind, ""))
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001  devices without the statistic (CPU, AOT topologies)
        stats = {}
    return stats.get("bytes_limit")


def resolve(config: ml_collections.ConfigDict, devices: Sequence[jax.Device],
            memory: int | None, *, compile_step: Callable = aot.train_step_memory,
            say: Callable[[str], None] = print) -> Setting:
    """Replaces the 'auto' keys of ``config`` (in place) by the first candidate whose train
    step fits ``memory`` bytes a device on ``devices``; ``memory`` None: the first candidate,
    uncompiled. Prints one line saying what was chosen (``say``). Returns the setting.

    Raises config.ConfigError naming the keys when no candidate fits (or none is valid).
    """
    options = candidates(config, len(devices))
    if not options:
        raise config_lib.ConfigError(
            f"config: microbatches: 'auto' finds no count dividing global_batch_size="
            f"{config.global_batch_size} over {len(devices)} devices")
    tried = []
    for setting in options:
        if memory is None:
            return _apply(config, setting, say, "device memory unknown: the cheapest, untried")
        result = compile_step(setting.config_with(config), devices)
        tried.append(f"{setting.describe()}: " + (result.error[:80] if result.error else
                                                 f"peak {result.peak_bytes / aot.GIB:.2f} GiB"))
        if not result.error and result.peak_bytes <= memory:
            return _apply(config, setting, say,
                          f"peak {result.peak_bytes / aot.GIB:.2f} GiB of "
                          f"{memory / aot.GIB:.2f} GiB a device, {len(tried)} compiled")
    raise config_lib.ConfigError(
        f"config: model.remat / microbatches / mesh: no 'auto' setting fits "
        f"{memory / aot.GIB:.2f} GiB a device at global_batch_size={config.global_batch_size}; "
        f"tried: " + "; ".join(tried))


def _apply(config, setting: Setting, say, why: str) -> Setting:
    _set(config, setting)
    say(f"auto: {setting.describe()} ({why})")
    return setting


def _set(config: ml_collections.ConfigDict, setting: Setting) -> None:
    with config.ignore_type():  # the keys held the string 'auto'
        config.model.remat, config.microbatches = setting.remat, setting.microbatches
        config.mesh.fsdp, config.mesh.data = setting.fsdp, setting.data
