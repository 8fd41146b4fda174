"""Mesh construction, parameter sharding rules, and the optimiser's parameter groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from tempret_jax import optim, sharding

PARAMS = {"visual": {"proj": jax.ShapeDtypeStruct((768, 512), jnp.float32),
                     "conv1": {"kernel": jax.ShapeDtypeStruct((16, 16, 3, 768), jnp.float32)},
                     "ln_post": {"scale": jax.ShapeDtypeStruct((768,), jnp.float32)}},
          "text": {"token_embedding": {"embedding": jax.ShapeDtypeStruct((49408, 512),
                                                                         jnp.float32)}},
          "logit_scale": jax.ShapeDtypeStruct((), jnp.float32)}


def test_mesh_fills_the_remaining_axis_and_rejects_what_does_not_fit():
    assert dict(sharding.make_mesh(-1, 2).shape) == {"data": 4, "fsdp": 2}
    assert dict(sharding.make_mesh(8, -1).shape) == {"data": 8, "fsdp": 1}
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        sharding.make_mesh(3, 1)
    with pytest.raises(ValueError, match="at most one axis"):
        sharding.make_mesh(-1, -1)


def test_fsdp_shards_the_largest_divisible_dimension_of_big_parameters():
    specs = sharding.partition_specs(PARAMS, sharding.make_mesh(2, 4), fsdp_min_size=1024)
    assert specs["visual"]["proj"] == P("fsdp", None)
    assert specs["visual"]["conv1"]["kernel"] == P(None, None, None, "fsdp")
    assert specs["text"]["token_embedding"]["embedding"] == P("fsdp", None)
    assert specs["visual"]["ln_post"]["scale"] == P()  # small: replicated
    assert specs["logit_scale"] == P()


def test_rules_override_by_regex_and_fsdp_1_replicates():
    rules = [(r"token_embedding", P(None, "fsdp"))]
    specs = sharding.partition_specs(PARAMS, sharding.make_mesh(2, 4), rules, fsdp_min_size=1024)
    assert specs["text"]["token_embedding"]["embedding"] == P(None, "fsdp")
    specs = sharding.partition_specs(PARAMS, sharding.make_mesh(8, 1), fsdp_min_size=1)
    assert all(s == P() for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))


def test_global_batch_is_sharded_over_every_mesh_axis():
    mesh = sharding.make_mesh(4, 2)
    batch = sharding.global_batch({"x": np.arange(16).reshape(8, 2)}, mesh)
    assert batch["x"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(batch["x"], np.arange(16).reshape(8, 2))


def test_optimizer_groups_multipliers_decay_and_freezing():
    params = {"visual": {"proj": jnp.ones((2, 2)), "ln": {"bias": jnp.ones(2)}},
              "text": {"proj": jnp.ones((2, 2))}, "logit_scale": jnp.ones(()),
              "cross_encoder": {"kernel": jnp.ones(2)}}
    c = optim.optim_config(lr=0.1, start_lr=0.1, end_lr=0.1, weight_decay=0.5,
                           lr_multipliers=((r"^text/", 0.5),), freeze=r"^cross_encoder/")
    tx, _ = optim.make_optimizer(c, params, total_steps=10)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # The first Adam step is -lr * sign(g) (bias-corrected), plus -lr * wd * w where decayed.
    np.testing.assert_allclose(updates["visual"]["proj"], -0.1 * 1.5, rtol=1e-5)
    np.testing.assert_allclose(updates["visual"]["ln"]["bias"], -0.1, rtol=1e-5)  # no decay
    np.testing.assert_allclose(updates["logit_scale"], -0.1, rtol=1e-5)  # no decay
    np.testing.assert_allclose(updates["text"]["proj"], -0.05 * 1.5, rtol=1e-5)
    np.testing.assert_array_equal(updates["cross_encoder"]["kernel"], 0)


def test_lamb_is_optax_lamb_with_our_groups_and_schedule():
    """optim.name='lamb' updates as optax.lamb (trust ratio per parameter) at the schedule's lr,
    with weight decay off the no_decay paths and nothing for frozen parameters."""
    params = {"visual": {"proj": jnp.full((3, 2), 2.0), "ln": {"bias": jnp.ones(2)}},
              "cross_encoder": {"kernel": jnp.ones(2)}}
    c = optim.optim_config(name="lamb", lr=0.1, start_lr=0.1, end_lr=0.1, weight_decay=0.5,
                           freeze=r"^cross_encoder/")
    tx, _ = optim.make_optimizer(c, params, total_steps=10)
    grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size).reshape(p.shape), params)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
    trainable = {"visual": params["visual"]}
    want_tx = optax.lamb(0.1, eps=c.eps, weight_decay=0.5,
                         mask=lambda t: {"visual": {"proj": True, "ln": {"bias": False}}})
    want_state = want_tx.init(trainable)
    for _ in range(3):
        want, want_state = want_tx.update({"visual": grads["visual"]}, want_state, trainable)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 updates["visual"], want["visual"])
    np.testing.assert_array_equal(updates["cross_encoder"]["kernel"], 0)
    with pytest.raises(ValueError, match="optim.name: expected one of"):
        optim.make_optimizer(optim.optim_config(name="sgd"), params, total_steps=10)


def test_schedule_warms_up_linearly_then_decays_to_the_end_lr():
    c = optim.optim_config(lr=1.0, start_lr=0.1, end_lr=0.01, warmup_steps=10)
    schedule = optim.learning_rate_schedule(c, total_steps=110)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.1, 0.55, 1.0],
                               rtol=1e-6)
    np.testing.assert_allclose(schedule(60), 0.01 + 0.99 * 0.5, rtol=1e-5)  # cosine midpoint
    np.testing.assert_allclose(schedule(110), 0.01, rtol=1e-5)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.learning_rate_schedule(c, total_steps=5)
