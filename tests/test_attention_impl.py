"""The einsum attention (CPU default) equals jax.nn.dot_product_attention, values and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempret_jax.models import layers

B, L, S, H, K = 2, 7, 9, 3, 8


def qkv(key_len, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(B, L, H, K), (B, key_len, H, K), (B, key_len, H, K)]
    return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


def padding_mask(key_len, seed=1):
    """(B, 1, 1, S) with at least one allowed key per example."""
    allowed = np.random.default_rng(seed).random((B, 1, 1, key_len)) > 0.4
    allowed[..., 0] = True
    return jnp.asarray(allowed)


CASES = {  # name: (key length, mask, causal)
    "plain": (S, None, False),
    "padding": (S, padding_mask(S), False),
    "causal": (L, None, True),
    "causal+padding": (L, padding_mask(L), True),
}


def weighted_sum(implementation, mask, causal, weights, q, k, v):
    out = layers.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                       implementation=implementation)
    return (out * weights).sum()


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_equal_jax_xla(case):
    key_len, mask, causal = CASES[case]
    q, k, v = qkv(key_len)
    weights = jnp.asarray(np.random.default_rng(2).standard_normal((B, L, H, K)), jnp.float32)
    results = {}
    for impl in ("einsum", "xla"):
        fn = functools.partial(weighted_sum, impl, mask, causal, weights)
        results[impl] = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(results["einsum"][0], results["xla"][0], rtol=1e-5, atol=1e-5)
    for ours, ref in zip(results["einsum"][1], results["xla"][1]):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_inputs_keep_their_dtype_and_track_float32():
    q, k, v = qkv(S)
    mask = padding_mask(S)
    ref = layers.dot_product_attention(q, k, v, mask=mask, implementation="einsum")
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = layers.dot_product_attention(*low, mask=mask, implementation="einsum")
    grads = jax.grad(lambda *a: layers.dot_product_attention(
        *a, mask=mask, implementation="einsum").astype(jnp.float32).sum(), (0, 1, 2))(*low)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=5e-2)


def test_auto_is_einsum_on_cpu():
    q, k, v = qkv(S)
    auto = jax.make_jaxpr(functools.partial(layers.dot_product_attention, implementation=None))
    assert "custom_vjp_call" in str(auto(q, k, v))
