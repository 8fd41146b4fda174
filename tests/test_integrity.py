"""Array checksums: the same on any sharding, changed by any flipped bit or moved value, and
non-finite leaves named by path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tempret_jax import integrity


def _tree():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((8, 6)).astype(np.float32),
            "opt": (np.arange(5, dtype=np.int32), jnp.ones((4, 2), jnp.bfloat16)),
            "flag": np.array([True, False]), "ema": None}


def test_checksums_do_not_depend_on_sharding_or_device_count():
    tree = _tree()
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    sharded = {**tree, "w": jax.device_put(tree["w"], NamedSharding(mesh, P("data", "fsdp")))}
    assert integrity.fingerprint(sharded) == integrity.fingerprint(tree)
    assert set(integrity.fingerprint(tree)[0]) == {"w", "opt/0", "opt/1", "flag"}


@pytest.mark.parametrize("leaf", ["w", "opt/0", "opt/1"])
@pytest.mark.parametrize("bit", [0, 7, 15])
def test_every_flipped_bit_changes_the_checksum(leaf, bit):
    tree = _tree()
    expected = integrity.fingerprint(tree)[0]
    flipped = jax.tree.map(np.array, tree)
    a = flipped["w"] if leaf == "w" else flipped["opt"][int(leaf[-1])]
    words = a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32).reshape(-1)
    words[3] ^= 1 << bit
    assert integrity.mismatches(flipped, expected) == [leaf]


def test_moved_values_change_the_checksum():
    tree = _tree()
    expected = integrity.fingerprint(tree)[0]
    swapped = {**tree, "w": tree["w"][::-1].copy()}
    assert integrity.mismatches(swapped, expected) == ["w"]


def test_non_finite_leaves_are_named_in_tree_order():
    tree = _tree()
    tree["w"][2, 3] = np.inf
    tree["opt"] = (tree["opt"][0], tree["opt"][1].at[0, 0].set(jnp.nan))
    assert integrity.fingerprint(tree)[1] == ["opt/1", "w"]


def test_mismatches_with_a_prefix_check_one_entry_of_a_state():
    state = {"params": {"w": np.ones(3, np.float32)}, "opt": np.zeros(2, np.float32)}
    saved = integrity.fingerprint(state)[0]
    assert integrity.mismatches(state["params"], saved, "params/") == []
    assert integrity.mismatches({"w": np.ones(3, np.float32) * 2}, saved, "params/") == ["params/w"]
    assert integrity.mismatches({"v": np.ones(3, np.float32)}, saved, "params/") == [
        "params/v", "params/w"]
