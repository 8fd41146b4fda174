"""A scanned layer stack without remat computes what the unrolled one does and, by default
(`layers.SCAN_POLICY`), keeps no more for the backward pass (docs/design.md, scan and remat)."""

import jax
import jax.numpy as jnp
import numpy as np

from tempret_jax.models import layers

NUM_LAYERS = 4
X = jax.random.normal(jax.random.key(0), (8, 64, 128))


def transformer(scan):
    return layers.Transformer(num_layers=NUM_LAYERS, num_heads=4,
                              settings=layers.StackSettings(scan=scan, mlp_kind="gelu"))


def loss(module):
    return lambda params, x: jnp.sum(module.apply({"params": params}, x) ** 2)


def temporaries_mib(scan):
    """XLA's temporary bytes of the stack's gradient, compiled for this CPU, in MiB."""
    module = transformer(scan)
    params = jax.eval_shape(module.init, jax.random.key(1), X)["params"]
    compiled = jax.jit(jax.grad(loss(module))).lower(params, X).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2 ** 20


def test_scanned_stack_without_remat_equals_unrolled():
    unrolled = transformer(False)
    params = unrolled.init(jax.random.key(1), X)["params"]
    blocks = [params[f"resblocks_{i}"] for i in range(NUM_LAYERS)]
    stacked = {"resblocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}
    value, grads = jax.jit(jax.value_and_grad(loss(unrolled)))(params, X)
    value_s, grads_s = jax.jit(jax.value_and_grad(loss(transformer(True))))(stacked, X)
    np.testing.assert_allclose(value_s, value, rtol=1e-5)
    # Recomputed activations round differently (gradients up to ~200 here); atol: gradients
    # that are 0 in exact arithmetic (the key biases') are rounding noise.
    for i in range(NUM_LAYERS):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-3, atol=1e-4),
                     grads_s["resblocks"], grads[f"resblocks_{i}"])


def test_scanned_stack_keeps_no_more_than_unrolled_layers(monkeypatch):
    unrolled, scanned = temporaries_mib(False), temporaries_mib(True)
    assert scanned <= unrolled
    # Keeping every residual, as a plain scan does, is what made it larger.
    monkeypatch.setattr(layers, "SCAN_POLICY", "everything_saveable")
    assert temporaries_mib(True) > unrolled
