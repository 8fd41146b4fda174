"""EVA02-AT spatial-temporal RoPE: relative positions, identity at the origin, class token
untouched."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from tempret_jax.models import rope, video

T, GH, GW, HEAD_DIM = 4, 3, 5, 16


def rotate_at(x, angles, index):
    """Rotates one head vector x (K,) by the angles of token `index`."""
    cos, sin = np.cos(angles[index:index + 1]), np.sin(angles[index:index + 1])
    return np.asarray(rope.apply_rope(jnp.asarray(x)[None, None, None], jnp.asarray(cos),
                                      jnp.asarray(sin)))[0, 0, 0]


def token(t, r, c):
    return (t * GH + r) * GW + c


@pytest.fixture(scope="module")
def angles():
    return rope.spatial_temporal_angles(T, GH, GW, HEAD_DIM)


@pytest.fixture(scope="module")
def qk():
    rng = np.random.default_rng(0)
    return tuple(rng.normal(size=HEAD_DIM).astype(np.float32) for _ in range(2))


def logit(angles, qk, pos_q, pos_k):
    q, k = qk
    return float(rotate_at(q, angles, token(*pos_q)) @ rotate_at(k, angles, token(*pos_k)))


@pytest.mark.parametrize("offset", [(1, 0, 0), (0, 1, 0), (0, 0, 2), (2, 1, -3), (-1, -2, 1)])
def test_logit_depends_only_on_the_offset(angles, qk, offset):
    """q.k after rotation is the same for every pair of positions with this (dt, drow, dcol)."""
    values = []
    for t in range(T):
        for r in range(GH):
            for c in range(GW):
                other = (t + offset[0], r + offset[1], c + offset[2])
                if 0 <= other[0] < T and 0 <= other[1] < GH and 0 <= other[2] < GW:
                    values.append(logit(angles, qk, (t, r, c), other))
    assert len(values) >= 2
    np.testing.assert_allclose(values, values[0], rtol=1e-5, atol=1e-5)


def test_different_offsets_give_different_logits(angles, qk):
    # Time, rows and columns are each seen: the property above is not a constant function.
    base = logit(angles, qk, (0, 0, 0), (0, 0, 0))
    for other in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        assert abs(logit(angles, qk, (0, 0, 0), other) - base) > 1e-3


def test_composed_angle_is_spatial_plus_time_times_frequency(angles):
    pairs = HEAD_DIM // 2
    w_t = rope.pair_frequencies(pairs, 10000.0)
    w_s = rope.pair_frequencies(pairs // 2, 10000.0)
    t, r, c = 2, 1, 3
    expected = np.concatenate([r * w_s, c * w_s]) + t * w_t
    np.testing.assert_allclose(angles[token(t, r, c)], expected, rtol=1e-6)


def test_identity_at_position_zero(angles):
    assert np.all(angles[token(0, 0, 0)] == 0)
    x = np.random.default_rng(1).normal(size=HEAD_DIM).astype(np.float32)
    np.testing.assert_array_equal(rotate_at(x, angles, token(0, 0, 0)), x)


def test_rotation_preserves_norm(angles):
    x = np.random.default_rng(2).normal(size=HEAD_DIM).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(rotate_at(x, angles, token(3, 2, 4))),
                               np.linalg.norm(x), rtol=1e-6)


def test_class_token_is_not_rotated(angles):
    cos, sin = rope.rope_table(angles, num_prefix_tokens=1)
    assert cos.shape == sin.shape == (1 + T * GH * GW, HEAD_DIM // 2)
    x = jax.random.normal(jax.random.key(0), (2, 1 + T * GH * GW, 3, HEAD_DIM))
    y = rope.apply_rope(x, cos, sin)
    np.testing.assert_array_equal(y[:, 0], x[:, 0])
    assert not np.allclose(y[:, 1:], x[:, 1:])


def test_bad_head_dim_and_table_shape_are_rejected():
    with pytest.raises(ValueError, match="divisible by 4"):
        rope.spatial_temporal_angles(2, 2, 2, head_dim=6)
    cos, sin = rope.rope_table(rope.spatial_temporal_angles(1, 2, 2, 8))
    with pytest.raises(ValueError, match="does not fit"):
        rope.apply_rope(jnp.zeros((1, 3, 2, 8)), cos, sin)


def test_rope_video_tower_sees_frame_order():
    # 'rope' alone: no learned position embeddings at all, yet frame order matters.
    tower = video.VisionTransformer(image_size=16, patch_size=8, width=32, layers=1, heads=2,
                                    output_dim=8, num_frames=3, pos_embed="rope")
    clip = jax.random.normal(jax.random.key(0), (1, 3, 16, 16, 3))
    variables = jax.jit(tower.init)(jax.random.key(1), clip)
    assert "positional_embedding" not in variables["params"]
    apply = jax.jit(tower.apply)
    a = apply(variables, clip)["embedding"]
    b = apply(variables, clip[:, ::-1])["embedding"]
    assert not np.allclose(a, b, atol=1e-4)
