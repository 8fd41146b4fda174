"""Every attention kernel (models/attention.py) equals the reference softmax attention, values and
gradients; 'auto' takes the kernel of the devices the model is placed on, not the local backend."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from tempret_jax.models import attention
from tempret_jax.models import rope as rope_lib

B, L, S, H, K = 2, 7, 9, 3, 8


def qkv(key_len, seed=0, batch=B, query_len=L, heads=H):
    rng = np.random.default_rng(seed)
    shapes = [(batch, query_len, heads, K), (batch, key_len, heads, K), (batch, key_len, heads, K)]
    return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


def padding_mask(key_len, seed=1, batch=B):
    """(B, 1, 1, S) with at least one allowed key per example."""
    allowed = np.random.default_rng(seed).random((batch, 1, 1, key_len)) > 0.4
    allowed[..., 0] = True
    return jnp.asarray(allowed)


CASES = {  # name: (key length, mask, causal)
    "plain": (S, None, False),
    "padding": (S, padding_mask(S), False),
    "causal": (L, None, True),
    "causal+padding": (L, padding_mask(L), True),
}


def value_and_grads(implementation, mask, causal, q, k, v):
    """(sum(out * w), d/dq, d/dk, d/dv) for fixed random weights w."""
    weights = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape), jnp.float32)

    def weighted_sum(q, k, v):
        out = attention.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                              implementation=implementation)
        return (out * weights).sum()

    value, grads = jax.jit(jax.value_and_grad(weighted_sum, argnums=(0, 1, 2)))(q, k, v)
    return (value, *grads)


def assert_all_close(ours, ref, tol):
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES)
def test_einsum_values_and_gradients_equal_jax_xla(case):
    key_len, mask, causal = CASES[case]
    q, k, v = qkv(key_len)
    assert_all_close(value_and_grads("einsum", mask, causal, q, k, v),
                     value_and_grads("xla", mask, causal, q, k, v), 1e-5)


def rotated(t, angles):
    return rope_lib.apply_rope(t, jnp.cos(angles), jnp.sin(angles))


# The TPU kernel, run by Pallas's TPU interpreter on this CPU: lengths off its 128-token blocks
# (padded keys masked by segment ids, padded queries sliced off), one and several key blocks.
PALLAS_CASES = {  # name: (batch, query length, key length, key padding mask, causal, RoPE)
    "self, RoPE, causal, padding, 130 -> 256 tokens": (1, 130, 130, True, True, True),
    "cross, padding, 300 -> 3 blocks of 128 keys": (2, 5, 300, True, False, False),
    "self, no mask, 128 tokens (no segment ids)": (1, 128, 128, False, False, False),
}


@pytest.mark.parametrize("case", PALLAS_CASES)
def test_pallas_tpu_kernel_equals_the_reference_in_interpret_mode(case, monkeypatch):
    monkeypatch.setattr(attention, "TPU_FLASH_MIN_KEYS", 0)  # small shapes, fast
    batch, query_len, key_len, masked, causal, rope = PALLAS_CASES[case]
    q, k, v = qkv(key_len, batch=batch, query_len=query_len, heads=2)
    if rope:  # the model rotates q and k before attention, whatever the kernel
        angles = jnp.asarray(np.random.default_rng(3).uniform(0, 6, (key_len, K // 2)),
                             jnp.float32)
        q, k = rotated(q, angles), rotated(k, angles)
    mask = padding_mask(key_len, batch=batch) if masked else None
    with pltpu.force_tpu_interpret_mode():
        ours = value_and_grads("pallas", mask, causal, q, k, v)
    assert_all_close(ours, value_and_grads("einsum", mask, causal, q, k, v), 2e-5)


def kernel_calls(implementation, mask, dtype=jnp.float32):
    q, k, v = (x.astype(dtype) for x in qkv(S))
    jaxpr = str(jax.make_jaxpr(functools.partial(
        attention.dot_product_attention, mask=mask, implementation=implementation))(q, k, v))
    return {name for name in ("pallas_call", "custom_vjp_call", "dot_general")
            if name in jaxpr}


def test_auto_takes_the_kernel_of_the_platform():
    assert attention.for_platform("cpu") == "einsum"
    assert attention.for_platform("tpu") == "pallas"
    assert attention.for_platform("gpu") == "cudnn"
    assert kernel_calls(None, None) >= {"custom_vjp_call"}  # the local backend: CPU here


def test_kernels_fall_back_to_xla_where_they_do_not_apply(monkeypatch):
    # Too few keys for the TPU kernel to save memory (S = 9 here):
    assert "pallas_call" not in kernel_calls("pallas", padding_mask(S))
    monkeypatch.setattr(attention, "TPU_FLASH_MIN_KEYS", S)
    assert "pallas_call" in kernel_calls("pallas", padding_mask(S))
    # A mask that varies over queries is no key padding: the TPU kernel takes none.
    per_query = jnp.asarray(np.random.default_rng(4).random((B, 1, L, S)) > 0.5)
    assert "pallas_call" not in kernel_calls("pallas", per_query)
    # cuDNN's flash attention takes half precision only: float32 runs XLA's (here, on CPU).
    q, k, v = qkv(S)
    np.testing.assert_allclose(
        attention.dot_product_attention(q, k, v, implementation="cudnn"),
        attention.dot_product_attention(q, k, v, implementation="xla"))


def test_an_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="expected one of"):
        attention.dot_product_attention(*qkv(S), implementation="flash")


def test_bfloat16_inputs_keep_their_dtype_and_track_float32():
    q, k, v = qkv(S)
    mask = padding_mask(S)
    ref = attention.dot_product_attention(q, k, v, mask=mask, implementation="einsum")
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = attention.dot_product_attention(*low, mask=mask, implementation="einsum")
    grads = jax.grad(lambda *a: attention.dot_product_attention(
        *a, mask=mask, implementation="einsum").astype(jnp.float32).sum(), (0, 1, 2))(*low)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=5e-2)
