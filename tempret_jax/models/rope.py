"""EVA02-AT spatial-temporal rotary position embedding (RoPE) on the whole head dimension.

A head vector of dimension K holds P = K / 2 rotary pairs (x[2p], x[2p+1]) (interleaved, as in
EVA02). Each pair is rotated by an angle that depends on the token's position:

- spatial 2D RoPE (EVA02): pairs p < P/2 rotate by row * w_s(p), pairs p >= P/2 by
  column * w_s(p - P/2), with w_s(j) = theta^(-j / (P/2)) (each half is a 1D RoPE of dim K/2);
- temporal 1D RoPE: every pair rotates by t * w_t(p), with w_t(p) = theta^(-p / P) (a 1D RoPE
  over the whole head dim).

Rotations of a 2D pair compose additively, so the composed angle is
    angle(t, row, col, p) = theta_spatial(row, col, p) + t * w_t(p).
Since q_i . k_j after rotation depends on angle_i - angle_j only, attention logits depend on the
relative offset (dt, drow, dcol), never on absolute positions. The class token gets angle 0 for
every pair (identity), i.e. it is not rotated.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def pair_frequencies(num_pairs: int, theta: float) -> np.ndarray:
    """Standard RoPE frequencies for a 1D RoPE of dimension 2 * num_pairs: (num_pairs,)."""
    return theta ** (-np.arange(num_pairs, dtype=np.float64) / num_pairs)


def spatial_temporal_angles(num_frames: int, grid_h: int, grid_w: int, head_dim: int,
                            theta: float = 10000.0, pretrain_grid: Optional[int] = None
                            ) -> np.ndarray:
    """Rotation angle of every rotary pair of every patch token.

    Tokens are ordered frame-major, then row, then column (the ViT's patch order).
    `pretrain_grid` G rescales the spatial positions to span G patches, row i at i * G / grid_h
    (EVA-CLIP's `intp_freq`: positions `arange(ft) / ft * pt_hw_seq_len`, rope.py
    VisionRotaryEmbeddingFast); None keeps the integer positions.
    Returns float32 (num_frames * grid_h * grid_w, head_dim // 2).
    """
    if head_dim % 4:
        raise ValueError(f"spatial-temporal RoPE needs head_dim divisible by 4, got {head_dim}")
    num_pairs = head_dim // 2
    w_s = pair_frequencies(num_pairs // 2, theta)
    w_t = pair_frequencies(num_pairs, theta)
    row_pos, col_pos = (np.arange(n, dtype=np.float64) for n in (grid_h, grid_w))
    if pretrain_grid:
        # The same float32 arithmetic as EVA-CLIP (arange / ft * pt): positions bit-equal.
        row_pos, col_pos = (np.arange(n, dtype=np.float32) / np.float32(n)
                            * np.float32(pretrain_grid) for n in (grid_h, grid_w))
    rows = row_pos.astype(np.float64)[:, None, None] * w_s                # (h, 1, P/2)
    cols = col_pos.astype(np.float64)[None, :, None] * w_s                # (1, w, P/2)
    spatial = np.concatenate(np.broadcast_arrays(rows, cols), axis=-1)     # (h, w, P)
    times = np.arange(num_frames, dtype=np.float64)[:, None, None, None] * w_t
    angles = spatial[None] + times                                         # (t, h, w, P)
    return angles.reshape(-1, num_pairs).astype(np.float32)


def rope_table(angles: np.ndarray, num_prefix_tokens: int = 1) -> Tuple[Array, Array]:
    """(cos, sin) for a sequence of `num_prefix_tokens` unrotated tokens then the patch tokens.

    angles (N, P) -> cos, sin each (num_prefix_tokens + N, P) float32; prefix rows are the
    identity rotation (cos 1, sin 0), so the class token is left untouched.
    """
    angles = np.concatenate([np.zeros((num_prefix_tokens, angles.shape[-1]), angles.dtype),
                             angles])
    return jnp.asarray(np.cos(angles)), jnp.asarray(np.sin(angles))


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotates interleaved pairs of x by the table's angles.

    x (B, L, H, K); cos, sin (L, K // 2) -> (B, L, H, K) in x.dtype (computed in float32).
    """
    if cos.shape != (x.shape[-3], x.shape[-1] // 2):
        raise ValueError(f"RoPE table {cos.shape} does not fit queries/keys {x.shape}: "
                         f"expected (L, K // 2) = {(x.shape[-3], x.shape[-1] // 2)}")
    xf = x.astype(jnp.float32).reshape(x.shape[:-1] + (-1, 2))
    x1, x2 = xf[..., 0], xf[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    rotated = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)
