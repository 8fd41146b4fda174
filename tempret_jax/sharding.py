"""Device mesh, parameter sharding rules and global batches.

The mesh has two axes: ``data`` (pure data parallelism: parameters replicated) and ``fsdp``
(data parallelism with parameters sharded, ZeRO-3 style). The batch is split over both, so
every device holds ``global_batch / (data * fsdp)`` examples.

Parameters are addressed by their path in the parameter tree, joined with '/', e.g.
``visual/transformer/resblocks_3/mlp/c_fc/kernel``. A partitioning is chosen per parameter:

1. the first of the user's ``rules`` (regex, PartitionSpec) whose regex ``re.search``es the path;
2. otherwise, a parameter with at least ``fsdp_min_size`` elements is sharded over ``fsdp`` on
   its largest dimension divisible by the fsdp axis size (ties: the last such dimension);
3. otherwise it is replicated.

Specs are computed on `jax.eval_shape` output, so parameters are created already sharded by
``jax.jit(init, out_shardings=...)`` and never exist whole on one device.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # the batch dimension is split over every mesh axis


def path_str(path) -> str:
    """A pytree key path -> 'a/b/c' (dict keys, attribute names and sequence indices)."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over all devices (of every process).

    Args:
      data, fsdp: axis sizes; one of them may be -1 for "all remaining devices".
      devices: defaults to `jax.devices()`.

    Auto axes: shardings of intermediate values are left to the compiler (GSPMD), so model
    code needs no sharding annotations.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got data={data}, fsdp={fsdp}")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} does not fit {len(devices)} devices")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} = {math.prod(sizes)} devices, "
                         f"but there are {len(devices)}")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 2,
                         devices=devices)


def _fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Shards the largest dimension divisible by ``fsdp_size`` over 'fsdp' (None if none)."""
    candidates = [(dim, i) for i, dim in enumerate(shape) if dim % fsdp_size == 0]
    if not candidates:
        return P()
    _, axis = max(candidates)
    return P(*(["fsdp" if i == axis else None for i in range(len(shape))]))


def partition_specs(abstract_params, mesh: Mesh, rules: Sequence[tuple[str, P]] = (),
                    fsdp_min_size: int = 2 ** 14):
    """PartitionSpecs for a parameter tree (see the module docstring for the rules).

    Args:
      abstract_params: a pytree of arrays or `jax.ShapeDtypeStruct`s.
      mesh: the mesh whose 'fsdp' axis size decides divisibility.
      rules: (regex, PartitionSpec or tuple of axis names) pairs, first match wins.
      fsdp_min_size: parameters with fewer elements stay replicated (sharding them costs more
        in collectives than it saves in memory).

    Returns:
      The same tree structure with a PartitionSpec per leaf.
    """
    compiled = [(re.compile(regex), spec if isinstance(spec, P) else P(*spec))
                for regex, spec in rules]
    fsdp_size = mesh.shape["fsdp"]

    def spec_of(path, leaf):
        name = path_str(path)
        for regex, spec in compiled:
            if regex.search(name):
                if len(spec) > len(leaf.shape):
                    raise ValueError(f"sharding rule {regex.pattern!r} gives {spec} to {name} "
                                     f"of shape {leaf.shape}: more axes than dimensions")
                return spec
        if fsdp_size > 1 and math.prod(leaf.shape) >= fsdp_min_size:
            return _fsdp_spec(leaf.shape, fsdp_size)
        return P()

    return jax.tree_util.tree_map_with_path(spec_of, abstract_params)


def named(mesh: Mesh, specs):
    """A tree of PartitionSpecs -> the same tree of NamedShardings on ``mesh``."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every mesh axis, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_devices(mesh: Mesh) -> int:
    """How many ways the batch is split."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """This process's numpy batch -> global `jax.Array`s sharded over the batch axes.

    Args:
      local_batch: {key: (B_local, ...) array}; every process passes its own rows, all with the
        same B_local, and the global batch is their concatenation in process order.
    Returns:
      {key: (B_local * process_count, ...) jax.Array}.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
