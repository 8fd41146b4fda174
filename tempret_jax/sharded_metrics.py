"""EK-100 MIR metrics as one jitted program, rows sharded over a device mesh (accelerators).

The ranking and the formulas are `metrics`' (docs/design.md, Metrics): a row is sorted by
(descending similarity, column), so ties keep the column order, and AP and nDCG are read off
the relevances in that order. The program is dense (fixed shapes, no per-row lists of
relevant items as on the CPU): one `lax.sort` per row carries the relevances along, then
cumulative sums and row sums. Each device ranks its own rows; T2V's rows are the columns, which
the compiler moves to their devices (the transposed matrix resharded). Both directions run in
one program.

Values are float32 (the accelerators' type): on EK-100's test split each query's AP and nDCG
are within 1e-5 of `metrics`' float64 ones and the percentages within 1e-4 points
(tests/test_metrics_sharded.py). On a CPU use `metrics.mir_per_row`: XLA's CPU sort is about
100x slower than NumPy's (BENCHMARKS.md).

Rows are padded to a multiple of the device count with similarity -inf and relevance 0: in
the other direction they are items that rank last and count nowhere; as rows they are cut off.

With several processes (a multi-host slice) each passes the same matrix, as the evaluator has
it on every process, and gets every row's values back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def _direction(sim: jax.Array, rel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row AP and nDCG (NaN where undefined) of (R, C) float32 arrays: (R,), (R,)."""
    column = lax.broadcasted_iota(jnp.int32, sim.shape, 1)
    descending = jnp.where(sim == 0, 0.0, -sim)  # -0.0 and 0.0 are one value
    _, _, ranked = lax.sort((descending, column, rel), dimension=1, num_keys=2)
    position = jnp.arange(1, sim.shape[1] + 1, dtype=jnp.float32)
    hit = ranked == 1
    n_hits = hit.sum(1)
    precision = jnp.cumsum(ranked, axis=1) / position
    ap = jnp.where(hit, precision, 0.0).sum(1) / jnp.maximum(n_hits, 1)
    k = (rel > 0).sum(1, keepdims=True)
    gain = jnp.where(position <= k, 1 / jnp.log2(position + 1), 0.0)
    dcg = (ranked * gain).sum(1)
    ideal_dcg = (jnp.sort(rel, axis=1)[:, ::-1] * gain).sum(1)
    return (jnp.where(n_hits > 0, ap, jnp.nan),
            jnp.where(ideal_dcg > 0, dcg / jnp.where(ideal_dcg > 0, ideal_dcg, 1), jnp.nan))


def _rows(mesh: Mesh) -> NamedSharding:
    """Dimension 0 split over every axis of the mesh's devices. The axes are made Auto, so
    that the compiler moves T2V's rows to their devices whatever the caller's axis types."""
    auto = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)
    return NamedSharding(auto, P(tuple(mesh.axis_names)))


def program(mesh: Mesh):
    """The jitted program: (sim, rel) (V, T) float32, rows split over ``mesh`` and V, T
    multiples of its size -> {('mAP' | 'nDCG', 'v2t'): (V,), (..., 't2v'): (T,)} float32."""
    rows = _rows(mesh)
    per_device = jax.shard_map(_direction, mesh=rows.mesh, in_specs=rows.spec,
                               out_specs=rows.spec)

    def mir_both_directions(sim, rel):
        values = {"v2t": per_device(sim, rel), "t2v": per_device(sim.T, rel.T)}
        return {(name, d): value for d, pair in values.items()
                for name, value in zip(("mAP", "nDCG"), pair)}

    return jax.jit(mir_both_directions, in_shardings=(rows, rows), out_shardings=rows)


def padded_shape(n_videos: int, n_texts: int, mesh: Mesh) -> tuple[int, int]:
    """(V, T) rounded up to multiples of the mesh's device count."""
    n = mesh.devices.size
    return -(-n_videos // n) * n, -(-n_texts // n) * n


def abstract_inputs(n_videos: int, n_texts: int, mesh: Mesh) -> tuple[jax.ShapeDtypeStruct, ...]:
    """`program`'s (sim, rel) for a (n_videos, n_texts) matrix, padded and split: for
    lowering ahead of time (`aot.metrics_memory`)."""
    shape = padded_shape(n_videos, n_texts, mesh)
    return (jax.ShapeDtypeStruct(shape, jnp.float32, sharding=_rows(mesh)),) * 2


def mir_per_row(sim: np.ndarray, rel: np.ndarray, mesh: Mesh) -> dict[tuple[str, str], np.ndarray]:
    """`metrics.mir_per_row` computed by `program` on ``mesh``'s devices.

    Args:
      sim, rel: (n_videos, n_texts), finite similarities and relevances in [0, 1].
      mesh: the devices; rows are split over all its axes.
    Returns:
      {('mAP' | 'nDCG', 'v2t'): (n_videos,), ('mAP' | 'nDCG', 't2v'): (n_texts,)} float32.
    """
    sim, rel = np.asarray(sim, np.float32), np.asarray(rel, np.float32)
    if sim.ndim != 2 or sim.shape != rel.shape or not np.isfinite(sim).all():
        raise ValueError(f"sim {sim.shape} and rel {rel.shape} must be 2-D of the same shape "
                         "(n_videos, n_texts), sim finite")
    shape = padded_shape(*sim.shape, mesh)
    pad = [(0, padded - n) for padded, n in zip(shape, sim.shape)]
    # Each process places only its own devices' rows; the outputs are gathered to every one.
    inputs = [jax.make_array_from_callback(shape, _rows(mesh), lambda index, x=x: x[index])
              for x in (np.pad(sim, pad, constant_values=-np.inf), np.pad(rel, pad))]
    out = multihost_utils.process_allgather(program(mesh)(*inputs), tiled=True)
    sizes = {"v2t": sim.shape[0], "t2v": sim.shape[1]}
    return {(name, d): np.asarray(value)[:sizes[d]] for (name, d), value in out.items()}
