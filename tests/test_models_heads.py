"""Temporal transformer, context refinement and cross-encoder: the properties they promise."""

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from tempret_jax.models import cross_encoder, refine, temporal


def randomize(params, key, scale=0.3):
    """Every parameter replaced by random values (so no branch is zero)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape)
                                     for k, x in zip(keys, leaves)])


@pytest.fixture(scope="module")
def frames():
    return jax.random.normal(jax.random.key(0), (3, 4, 16))                  # (B, T, D)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_temporal_transformer_starts_as_frame_averaging(frames, pool):
    module = temporal.TemporalTransformer(num_frames=4, layers=2, heads=2, pool=pool)
    params = jax.jit(module.init)(jax.random.key(1), frames)
    out = jax.jit(module.apply)(params, frames)
    assert out.shape == (3, 16)
    np.testing.assert_allclose(out, frames.mean(axis=1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_trained_temporal_transformer_sees_frame_order(frames, pool):
    module = temporal.TemporalTransformer(num_frames=4, layers=2, heads=2, pool=pool)
    params = randomize(jax.jit(module.init)(jax.random.key(1), frames), jax.random.key(2))
    reversed_frames = frames[:, ::-1]
    # Frame averaging cannot tell the two apart; the temporal transformer does.
    np.testing.assert_allclose(frames.mean(1), reversed_frames.mean(1), rtol=1e-6, atol=1e-6)
    apply = jax.jit(module.apply)
    diff = np.abs(apply(params, frames) - apply(params, reversed_frames)).max()
    assert diff > 1e-3


def test_temporal_transformer_rejects_wrong_frame_count(frames):
    module = temporal.TemporalTransformer(num_frames=8, layers=1, heads=2)
    with pytest.raises(ValueError, match="built for 8 frames, got 4"):
        module.init(jax.random.key(0), frames)


@pytest.fixture(scope="module")
def refinement():
    videos = jax.random.normal(jax.random.key(3), (6, 16))
    texts = jax.random.normal(jax.random.key(4), (5, 16))
    module = refine.ContextRefinement(dim=16, heads=2)
    params = randomize(jax.jit(module.init)(jax.random.key(5), videos, texts), jax.random.key(6))
    return module, params, videos, texts


def test_refinement_does_not_depend_on_gallery_or_query_order(refinement):
    module, params, videos, texts = refinement
    v, t = module.apply(params, videos, texts)
    assert v.shape == (6, 16) and t.shape == (5, 16)
    pv, pt = np.random.default_rng(0).permutation(6), np.random.default_rng(1).permutation(5)
    v2, t2 = module.apply(params, videos[pv], texts[pt])
    np.testing.assert_allclose(v2, v[pv], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t2, t[pt], rtol=1e-5, atol=1e-5)


def test_refinement_in_chunks_equals_all_at_once(refinement):
    module, params, videos, texts = refinement
    full = module.apply(params, videos, texts, method=module.refine_video)
    chunks = [module.apply(params, videos[i:i + 2], texts, method=module.refine_video)
              for i in range(0, 6, 2)]
    np.testing.assert_allclose(np.concatenate(chunks), full, rtol=1e-5, atol=1e-5)


def test_refinement_gallery_mask_drops_padding_rows(refinement):
    module, params, videos, texts = refinement
    padded = jnp.concatenate([texts, 100.0 * jnp.ones((3, 16))])
    mask = jnp.arange(8) < 5
    a = module.apply(params, videos, texts, method=module.refine_video)
    b = module.apply(params, videos, padded, mask, method=module.refine_video)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_refinement_depends_on_the_gallery(refinement):
    module, params, videos, texts = refinement
    a = module.apply(params, videos, texts, method=module.refine_video)
    b = module.apply(params, videos, texts[:2], method=module.refine_video)
    assert np.abs(a - b).max() > 1e-3


@pytest.fixture(scope="module")
def itm():
    rng = jax.random.split(jax.random.key(7), 3)
    text_tokens = jax.random.normal(rng[0], (4, 7, 12))                        # (Q, L, D_t)
    mask = jnp.arange(7)[None] < jnp.array([[3], [7], [5], [1]])              # (Q, L)
    video_tokens = jax.random.normal(rng[1], (5, 9, 20))                      # (V, M, D_v)
    module = cross_encoder.CrossEncoder(width=16, layers=2, heads=4, num_frames=3)  # 3 x 3
    params = jax.jit(module.init)(rng[2], text_tokens[:1], mask[:1], video_tokens[:1])
    return module, params, text_tokens, mask, video_tokens


def test_the_cross_encoder_sees_frame_order(itm):
    module, params, text_tokens, mask, video_tokens = itm
    reversed_frames = video_tokens.reshape(5, 3, 3, 20)[:, ::-1].reshape(5, 9, 20)
    apply = jax.jit(module.apply)
    forward = apply(params, text_tokens[:4], mask[:4], video_tokens[:4])
    backward = apply(params, text_tokens[:4], mask[:4], reversed_frames[:4])
    assert np.abs(np.asarray(forward - backward)).min() > 1e-4
    # Without the temporal embedding, cross-attention cannot tell the two apart.
    blind = cross_encoder.CrossEncoder(width=16, layers=2, heads=4)
    blind_params = {"params": {k: v for k, v in params["params"].items()
                               if k != "temporal_embed"}}
    np.testing.assert_allclose(blind.apply(blind_params, text_tokens[:4], mask[:4],
                                           video_tokens[:4]),
                               blind.apply(blind_params, text_tokens[:4], mask[:4],
                                           reversed_frames[:4]), rtol=1e-5, atol=1e-5)


def test_video_tokens_that_are_not_whole_frames_are_named(itm):
    module, params, text_tokens, mask, video_tokens = itm
    with pytest.raises(ValueError, match="8 video tokens are not 3 frames'"):
        module.apply(params, text_tokens[:1], mask[:1], video_tokens[:1, :8])


def pairwise(module, params, text_tokens, mask, video_tokens):
    """Reference: one (text, video) pair per call. -> (Q, V)."""
    apply = jax.jit(module.apply)
    return np.array([[float(apply(params, text_tokens[q:q + 1], mask[q:q + 1],
                                  video_tokens[v:v + 1])[0])
                      for v in range(video_tokens.shape[0])]
                     for q in range(text_tokens.shape[0])])


def test_cross_encoder_batched_scoring_equals_pairwise(itm):
    module, params, text_tokens, mask, video_tokens = itm
    expected = pairwise(module, params, text_tokens, mask, video_tokens)
    # Text queries against K = 3 candidate videos each (cached tokens, gathered by index).
    candidates = jnp.array([[0, 2, 4], [1, 1, 3], [4, 3, 2], [0, 1, 2]])
    score = jax.jit(functools.partial(module.apply, method=module.score))
    logits = score(params, text_tokens[:, None], mask[:, None], video_tokens[candidates])
    assert logits.shape == (4, 3)
    np.testing.assert_allclose(logits, np.take_along_axis(expected, np.asarray(candidates), 1),
                               rtol=1e-5, atol=1e-5)
    # Video queries against K = 2 candidate texts each.
    text_candidates = jnp.array([[0, 1], [3, 2], [2, 2], [1, 0], [3, 0]])
    logits = score(params, text_tokens[text_candidates], mask[text_candidates],
                   video_tokens[:, None])
    np.testing.assert_allclose(
        logits, np.take_along_axis(expected.T, np.asarray(text_candidates), 1),
        rtol=1e-5, atol=1e-5)


def test_cross_encoder_ignores_padded_text_tokens(itm):
    module, params, text_tokens, mask, video_tokens = itm
    noisy = jnp.where(mask[..., None], text_tokens, 50.0)
    apply = jax.jit(module.apply)
    a = apply(params, text_tokens, mask, video_tokens[:4])
    b = apply(params, noisy, mask, video_tokens[:4])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.all((cross_encoder.itm_probability(a) > 0) & (cross_encoder.itm_probability(a) < 1))


def test_cross_encoder_depends_on_the_video(itm):
    module, params, text_tokens, mask, video_tokens = itm
    params = randomize(params, jax.random.key(8))
    apply = jax.jit(module.apply)
    a = apply(params, text_tokens, mask, video_tokens[:4])
    b = apply(params, text_tokens, mask, video_tokens[1:])
    assert np.abs(a - b).max() > 1e-3
