"""Integrity of a pytree of arrays: a checksum per array and which arrays are not finite.

Both are computed where the arrays live (one jitted pass, sharded like the arrays; only one
scalar per leaf comes back to the host), so a checkpoint can carry the checksums of the state
it holds and a restore can recompute and compare them (docs/design.md, Checkpoints).

The checksum of an array is the sum, modulo 2**32, of its bit pattern read as unsigned words
(4-byte dtypes as uint32; 2- and 1-byte dtypes widened), each word times the odd weight
2 * i + 1 of its flat position i. A flipped bit changes one word by +-2**k, and 2**k times an
odd number is never 0 modulo 2**32, so every single-bit error is caught, as is moving a value
to another position. Integer addition is exact in any order: the checksum is the same on any
mesh, sharding or number of devices, so a state saved on 8 devices checks on 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from tempret_jax.sharding import path_str


def _words(x: jax.Array) -> jax.Array:
    """x's bit pattern as uint32, same shape (bool, 1-, 2- and 4-byte dtypes)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
    words = _words(x)
    # The flat position from iotas in the array's own shape: no reshape, so no resharding.
    position, stride = jnp.zeros(words.shape, jnp.uint32), 1
    for axis in reversed(range(words.ndim)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis)
        position = position + iota * jnp.uint32(stride % 2**32)
        stride *= words.shape[axis]
    return jnp.sum(words * (position * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)


def _finite(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.all(jnp.isfinite(x))
    return jnp.asarray(True)


@jax.jit
def _fingerprint(tree):
    return jax.tree.map(_checksum, tree), jax.tree.map(_finite, tree)


def fingerprint(tree) -> tuple[dict[str, int], list[str]]:
    """(checksums, non_finite) of every array leaf of ``tree`` (jax or numpy arrays).

    checksums: {'a/b/c': int in [0, 2**32)}; non_finite: the paths of the floating-point leaves
    holding a NaN or an infinity, in tree order.
    """
    sums, finite = jax.device_get(_fingerprint(tree))
    flat = jax.tree_util.tree_flatten_with_path
    checksums = {path_str(p): int(v) for p, v in flat(sums)[0]}
    return checksums, [path_str(p) for p, ok in flat(finite)[0] if not bool(ok)]


def mismatches(tree, expected: Mapping[str, int], prefix: str = "") -> list[str]:
    """The paths whose checksum differs from ``expected`` (or that it lacks or has beyond).

    prefix: prepended to the tree's paths ('params/' when checking one entry of a state).
    """
    checksums = {prefix + k: v for k, v in fingerprint(tree)[0].items()}
    wanted = {k: v for k, v in expected.items() if k.startswith(prefix)}
    return sorted(k for k in checksums.keys() | wanted.keys()
                  if checksums.get(k) != wanted.get(k))
