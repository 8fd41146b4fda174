"""Softmax attention, one kernel per backend, chosen by the platform the model runs on.

    'einsum'  `_einsum_attention`: einsums with a hand-written backward (CPU default: several
              times faster than XLA's on XLA:CPU, BENCHMARKS.md)
    'xla'     `jax.nn.dot_product_attention(implementation='xla')`: the (B, H, L, S) scores
              materialised
    'cudnn'   cuDNN flash attention through `jax.nn.dot_product_attention` (GPU default)
              where cuDNN takes the inputs (bfloat16/float16, head dim a multiple of 8 up to
              128; odd lengths padded by one), else 'xla'
    'pallas'  the Pallas TPU flash kernel (`jax.experimental.pallas.ops.tpu.flash_attention`,
              TPU default): scores never materialised beyond one block, for key-padding masks
              and at least TPU_FLASH_MIN_KEYS keys; else 'xla'

`for_platform(platform)` is what `model.attention_impl='auto'` becomes on a mesh whose devices
have that platform (`state.TrainSetup` resolves it from the mesh, so compiling ahead of time for
TPU from a CPU machine takes the TPU kernel); `None` at call time means the local backend's.

Shapes: q (B, L, H, K), k and v (B, S, H, K); a mask is boolean, True where attention is
allowed, broadcastable to (B, H, L, S). RoPE rotates q and k before attention, so every kernel
supports it. Rows with no allowed key are undefined (no model here produces them).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
from jax.sharding import PartitionSpec as P

Array = jax.Array
IMPLEMENTATIONS = (None, "einsum", "xla", "cudnn", "pallas")
PLATFORM_DEFAULTS = {"cpu": "einsum", "tpu": "pallas", "gpu": "cudnn", "cuda": "cudnn"}
TPU_BLOCK = 128  # the flash kernel's minimum block: lengths are padded to a multiple of it
TPU_MAX_BLOCK = 512
# Below this many keys the kernel saves no memory: it keeps two float32 (L, 128) row statistics
# and pads to 128, as much as XLA's (L, S) probabilities (TempRet's 197-token frames: 21.6 GiB
# of temporaries with XLA's attention, 23.3 GiB with the kernel; BENCHMARKS.md).
TPU_FLASH_MIN_KEYS = 512


def for_platform(platform: str) -> str:
    """The implementation 'auto' takes on devices of ``platform`` ('cpu', 'tpu', 'gpu', ...)."""
    return PLATFORM_DEFAULTS.get(platform, "xla")


def _attention_probs(q: Array, k: Array, mask: Optional[Array], causal: bool) -> Array:
    """softmax(q k^T / sqrt(K)) over keys, float32 (B, H, L, S)."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q * (q.shape[-1] ** -0.5), k,
                        preferred_element_type=jnp.float32)
    if causal:
        allowed = jnp.tril(jnp.ones(scores.shape[-2:], bool))
        mask = allowed if mask is None else jnp.logical_and(mask, allowed)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _einsum_attention(q: Array, k: Array, v: Array, mask: Optional[Array],
                      causal: bool) -> Array:
    """Softmax attention as einsums with head-major (B, H, L, S) scores (float32 softmax) and
    the standard attention backward (dS = P * (dP - rowsum(dO * O))).

    On XLA:CPU this is several times faster forward+backward than
    `jax.nn.dot_product_attention(implementation='xla')`: its (B, N, T, S) logits layout makes
    XLA transpose the whole probability matrix before the second product, and autodiff of its
    softmax differentiates through the normalising division, with four more passes over the
    L x S matrix than this backward (BENCHMARKS.md, model train step).
    """
    probs = _attention_probs(q, k, mask, causal)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def _einsum_attention_fwd(q, k, v, mask, causal):
    probs = _attention_probs(q, k, mask, causal)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    return out, (q, k, v, mask, probs, out)


def _einsum_attention_bwd(causal, residuals, d_out):
    del causal  # the saved probabilities carry the mask
    q, k, v, mask, probs, out = residuals
    d_v = jnp.einsum("bhqk,bqhd->bkhd", probs.astype(d_out.dtype), d_out)
    d_probs = jnp.einsum("bqhd,bkhd->bhqk", d_out, v, preferred_element_type=jnp.float32)
    # rowsum(dP * P) = rowsum(dO * O) since O = P V: a (B, H, L) reduction instead of L x S.
    delta = jnp.einsum("bqhd,bqhd->bhq", d_out, out, preferred_element_type=jnp.float32)
    d_scores = (probs * (d_probs - delta[..., None])).astype(q.dtype)
    scale = q.shape[-1] ** -0.5
    d_q = jnp.einsum("bhqk,bkhd->bqhd", d_scores, k) * scale
    d_k = jnp.einsum("bhqk,bqhd->bkhd", d_scores, q) * scale
    return d_q, d_k, d_v, None if mask is None else jnp.zeros_like(mask, jax.dtypes.float0)


_einsum_attention.defvjp(_einsum_attention_fwd, _einsum_attention_bwd)


def _is_key_padding(mask: Optional[Array]) -> bool:
    """Whether ``mask`` depends on the key only (B|1, 1, 1, S), or is None."""
    return mask is None or (mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == 1)


def _block(length: int) -> int:
    """The largest power-of-two block from TPU_BLOCK to TPU_MAX_BLOCK dividing ``length``."""
    block = TPU_BLOCK
    while block * 2 <= TPU_MAX_BLOCK and length % (block * 2) == 0:
        block *= 2
    return block


def _tpu_flash(q: Array, k: Array, v: Array, key_valid: Array, *, masked: bool,
               causal: bool) -> Array:
    """The Pallas flash kernel on one shard; key_valid (B, S) bool, read when ``masked``.

    Lengths are padded to multiples of TPU_BLOCK; padded keys (and masked ones) get segment id
    0, queries 1, so no query attends to them; padded queries are sliced off.
    """
    (batch, q_len, _, head_dim), key_len = q.shape, k.shape[1]
    q_pad, k_pad = (-q_len) % TPU_BLOCK, (-key_len) % TPU_BLOCK

    def heads_major(t, n):  # (B, T, H, K) -> (B, H, T + n, K)
        return jnp.pad(t, ((0, 0), (0, n), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    segment_ids = None
    if masked or k_pad:
        valid = key_valid if masked else jnp.ones((batch, key_len), bool)
        segment_ids = tpu_flash.SegmentIds(
            q=jnp.ones((batch, q_len + q_pad), jnp.int32),
            kv=jnp.pad(valid, ((0, 0), (0, k_pad))).astype(jnp.int32))
    bq, bk = _block(q_len + q_pad), _block(key_len + k_pad)
    blocks = tpu_flash.BlockSizes(
        block_q=bq, block_k_major=bk, block_k=bk, block_b=1,
        block_q_major_dkv=bq, block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq,
        block_k_major_dq=bk, block_k_dq=bk, block_q_dq=bq)
    out = tpu_flash.flash_attention(heads_major(q, q_pad), heads_major(k, k_pad),
                                    heads_major(v, k_pad), None, segment_ids, causal=causal,
                                    sm_scale=head_dim ** -0.5, block_sizes=blocks)
    return out.transpose(0, 2, 1, 3)[:, :q_len]


def _pallas_attention(q: Array, k: Array, v: Array, mask: Optional[Array],
                      causal: bool) -> Array:
    """The TPU flash kernel for a key-padding mask (`_is_key_padding`), on each batch shard of
    the context mesh (`jax.set_mesh`, as the train step sets it): a Pallas call is opaque to
    XLA's partitioner, which would gather the whole batch onto every chip. Without a context
    mesh (or a batch the mesh does not divide) the kernel sees the whole batch."""
    batch, key_len = q.shape[0], k.shape[1]
    kernel = functools.partial(_tpu_flash, masked=mask is not None, causal=causal)
    key_valid = jnp.broadcast_to(True if mask is None else mask[:, 0, 0, :], (batch, key_len))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or batch % mesh.size:
        return kernel(q, k, v, key_valid)
    shards = P(mesh.axis_names)  # the batch over every mesh axis, as the train step splits it
    return jax.shard_map(kernel, in_specs=(shards,) * 4, out_specs=shards,
                         check_vma=False)(q, k, v, key_valid)


def _cudnn_applies(q: Array) -> bool:
    """Whether cuDNN's flash attention takes these inputs (jax's own checks, made early)."""
    head_dim = q.shape[-1]
    return q.dtype in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128


def _cudnn_attention(q: Array, k: Array, v: Array, mask: Optional[Array],
                     causal: bool) -> Array:
    """cuDNN flash attention. Its backward takes even lengths only (jax's check): an odd length
    (e.g. 3,137 tokens) is padded by one, which the sequence lengths leave out."""
    (batch, q_len), key_len = q.shape[:2], k.shape[1]
    q_pad, k_pad = q_len % 2, key_len % 2

    def padded(t, pads):  # pads: the count for each axis
        return jnp.pad(t, [(0, n) for n in pads])

    if mask is not None:  # cuDNN takes a bias of the whole (L, S); the padding is masked
        mask = padded(jnp.broadcast_to(mask, (mask.shape[0], mask.shape[1], q_len, key_len)),
                      (0, 0, q_pad, k_pad))
    out = jax.nn.dot_product_attention(
        padded(q, (0, q_pad, 0, 0)), padded(k, (0, k_pad, 0, 0)), padded(v, (0, k_pad, 0, 0)),
        mask=mask, is_causal=causal, implementation="cudnn",
        query_seq_lengths=jnp.full((batch,), q_len, jnp.int32),
        key_value_seq_lengths=jnp.full((batch,), key_len, jnp.int32))
    return out[:, :q_len]


def dot_product_attention(q: Array, k: Array, v: Array, *, mask: Optional[Array] = None,
                          is_causal: bool = False, implementation: Optional[str] = None) -> Array:
    """q (B, L, H, K), k and v (B, S, H, K), mask broadcastable to (B, H, L, S) -> (B, L, H, K).

    implementation: one of IMPLEMENTATIONS (module docstring); None -> the local backend's
    (`for_platform(jax.default_backend())`).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation: expected one of {IMPLEMENTATIONS}, "
                         f"got {implementation!r}")
    if implementation is None:
        implementation = for_platform(jax.default_backend())
    if implementation == "einsum":
        return _einsum_attention(q, k, v, mask, is_causal)
    if (implementation == "pallas" and _is_key_padding(mask)
            and k.shape[1] >= TPU_FLASH_MIN_KEYS):
        return _pallas_attention(q, k, v, mask, is_causal)
    if implementation == "cudnn" and _cudnn_applies(q):
        return _cudnn_attention(q, k, v, mask, is_causal)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                        implementation="xla")
