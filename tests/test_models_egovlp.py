"""EgoVLP's towers: divided space-time attention, DistilBERT, their configs and temporal fixes.

Parity with EgoVLP's own PyTorch classes is in test_golden_egovlp.py; these tests state each
rule on its own, against NumPy written from the formulas in the modules' docstrings.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempret_jax import config as config_lib
from tempret_jax import param_layout
from tempret_jax.models import distilbert, retrieval, space_time


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


def _masked_attention(params, x, heads, allowed):
    """Full attention over all tokens with a (L, L) mask, float64: the reference for the
    grouped computation."""
    p = {k: np.asarray(v["kernel"], np.float64) for k, v in params.items()}
    b = {k: np.asarray(v["bias"], np.float64) for k, v in params.items()}
    q, k, v = (np.einsum("bld,dhk->blhk", x, p[n]) + b[n] for n in "qkv")
    scores = np.einsum("bqhk,bshk->bhqs", q, k) * q.shape[-1] ** -0.5
    probs = _softmax(np.where(allowed, scores, -np.inf))
    out = np.einsum("bhqs,bshk->bqhk", probs, v)
    return np.einsum("blhk,hkd->bld", out, p["out"]) + b["out"]


def _divided_mask(frames, patches, axis):
    """(L, L) True where EgoVLP lets a query see a key (module docstring of space_time)."""
    f = np.repeat(np.arange(frames), patches)
    n = np.tile(np.arange(patches), frames)
    same = (f[:, None] == f[None]) if axis == "space" else (n[:, None] == n[None])
    allowed = np.ones((1 + frames * patches,) * 2, bool)
    allowed[1:, 1:] = same
    return allowed


@pytest.mark.parametrize("axis", ["time", "space"])
def test_divided_attention_is_attention_restricted_to_the_class_token_and_one_group(axis):
    frames, patches, width, heads = 3, 4, 8, 2
    x = np.random.default_rng(0).normal(size=(2, 1 + frames * patches, width))
    layer = space_time.DividedAttention(heads, frames, axis)
    params = layer.init(jax.random.key(1), jnp.asarray(x, jnp.float32))["params"]
    got = layer.apply({"params": params}, jnp.asarray(x, jnp.float32))

    want = _masked_attention(params, x, heads, _divided_mask(frames, patches, axis))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_a_fresh_tower_temporal_attention_adds_nothing_as_egovlps_time_init_zeros():
    layer = space_time.DividedAttention(2, 2, "time", zero_init=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 9, 8)), jnp.float32)
    params = layer.init(jax.random.key(0), x)["params"]
    assert all(np.all(params[n]["kernel"] == 0) for n in "qkv")
    assert np.all(params["out"]["kernel"] == 1)
    np.testing.assert_array_equal(layer.apply({"params": params}, x), 0.0)


def _block_reference(params, x, frames, patches, heads, eps):
    def ln(name, h):
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        return ((h - mu) / np.sqrt(var + eps) * np.asarray(params[name]["scale"])
                + np.asarray(params[name]["bias"]))

    time_out = _masked_attention(params["time_attn"], ln("ln_time", x), heads,
                                 _divided_mask(frames, patches, "time"))
    space_out = _masked_attention(params["attn"], ln("ln_1", x + time_out), heads,
                                  _divided_mask(frames, patches, "space"))
    s = x + space_out  # x, not x + time_out: Frozen-in-Time's residual
    m = params["mlp"]
    h = ln("ln_2", s) @ np.asarray(m["c_fc"]["kernel"]) + np.asarray(m["c_fc"]["bias"])
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
    return s + h @ np.asarray(m["c_proj"]["kernel"]) + np.asarray(m["c_proj"]["bias"])


def test_a_block_attends_in_time_then_in_space_and_adds_both_to_its_input():
    frames, patches, width, heads = 2, 4, 8, 2
    settings = space_time.StackSettings(mlp_kind="gelu", ln_eps=1e-6)
    block = space_time.SpaceTimeBlock(heads, frames, settings)
    x = np.random.default_rng(2).normal(size=(2, 1 + frames * patches, width))
    params = block.init(jax.random.key(3), jnp.asarray(x, jnp.float32))["params"]
    # Random temporal attention (a fresh one adds zero and would test nothing).
    keys = iter(jax.random.split(jax.random.key(4), 8))
    params = dict(params, time_attn=jax.tree.map(
        lambda a: jax.random.normal(next(keys), a.shape) * 0.5, params["time_attn"]))
    got = block.apply({"params": params}, jnp.asarray(x, jnp.float32))

    want = _block_reference(params, x, frames, patches, heads, 1e-6)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def _tiny(preset="egovlp_tiny", **overrides):
    c = retrieval.model_config(preset)
    c.update(overrides)
    return c


def test_the_video_tower_takes_fewer_frames_than_its_temporal_embedding_but_not_more():
    tower = space_time.SpaceTimeTransformer(image_size=16, patch_size=8, width=8, layers=1,
                                            heads=2, output_dim=4, num_frames=4)
    video = jnp.ones((1, 4, 16, 16, 3))
    params = tower.init(jax.random.key(0), video)
    assert tower.apply(params, video[:, :2])["embedding"].shape == (1, 4)
    with pytest.raises(ValueError, match="5 frames but the temporal embedding has 4"):
        tower.apply(params, jnp.ones((1, 5, 16, 16, 3)))


def test_distilbert_outputs_do_not_depend_on_how_far_a_row_is_padded():
    model = distilbert.DistilBert(vocab_size=20, max_positions=16, width=8, layers=2, heads=2,
                                  output_dim=4, stack=distilbert.StackSettings(
                                      mlp_kind="gelu", ln_eps=1e-12))
    short = jnp.array([[1, 5, 7, 2]])
    padded = jnp.array([[1, 5, 7, 2, 0, 0, 0, 0]])
    params = model.init(jax.random.key(0), padded)
    pooled_s, tokens_s = model.apply(params, short)
    pooled_p, tokens_p = model.apply(params, padded)
    np.testing.assert_allclose(pooled_s, pooled_p, atol=1e-6)
    np.testing.assert_allclose(tokens_s, tokens_p[:, :4], atol=1e-6)


def test_the_egovlp_model_masks_text_by_pad_id_and_encodes_both_modalities():
    c = _tiny()
    model = retrieval.RetrievalModel.from_config(c)
    video, ids = jnp.zeros((2, 4, 32, 32, 3)), jnp.array([[1, 9, 2, 0], [1, 9, 8, 2]])
    variables = model.init(jax.random.key(0), video, ids)
    out = model.apply(variables, video, ids)
    assert out["video"].shape == out["text"].shape == (2, 16)
    np.testing.assert_array_equal(out["text_mask"], ids != 0)


def test_the_b16_preset_is_egovlps_frozen_in_time():
    c = retrieval.model_config("egovlp_b16")
    assert (c.embed_dim, c.vision.tower, c.text.tower) == (256, "space_time", "distilbert")
    assert (c.vision.width, c.vision.layers, c.vision.heads, c.vision.patch_size) == (
        768, 12, 12, 16)
    assert (c.text.vocab_size, c.text.width, c.text.layers, c.text.heads,
            c.text.max_positions, c.text.ln_eps) == (30522, 768, 6, 12, 512, 1e-12)
    assert (c.vision.ln_eps, c.vision.mlp, c.vision.temporal_fix) == (1e-6, "gelu", "zeros")


@pytest.mark.parametrize("key, value, message", [
    ("vision.tower", "timesformer", "model.vision.tower"),
    ("text.tower", "bert", "model.text.tower"),
    ("vision.frame_mode", True, "model.vision.frame_mode"),
    ("vision.pos_embed", "rope", "model.vision.pos_embed"),
    ("vision.temporal_fix", "nearest", "model.vision.temporal_fix"),
    ("text.context_length", 600, "model.text.context_length"),
])
def test_a_setting_the_egovlp_towers_cannot_honour_is_refused_by_name(key, value, message):
    c = _tiny("egovlp_b16")
    block, name = key.split(".")
    c[block][name] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate_model(c)


def test_temporal_fixes_pad_with_zeros_or_interpolate_with_or_without_corners():
    embedding = np.array([[0.0], [3.0]], np.float32)
    np.testing.assert_allclose(
        param_layout.inflate_temporal_embedding(embedding, 4, "zeros")[:, 0], [0, 3, 0, 0])
    np.testing.assert_allclose(  # align_corners=True: the ends are kept
        param_layout.inflate_temporal_embedding(embedding, 4, "bilinear_corners")[:, 0],
        [0, 1, 2, 3])
    np.testing.assert_allclose(  # AVION's align_corners=False: src = (i + .5) / 2 - .5
        param_layout.inflate_temporal_embedding(embedding, 4, "bilinear")[:, 0],
        [0, 0.75, 2.25, 3])
    for fix in param_layout.TEMPORAL_FIXES:  # fewer frames: the first ones, by every rule
        np.testing.assert_array_equal(
            param_layout.inflate_temporal_embedding(embedding, 1, fix), embedding[:1])


def test_a_model_config_saved_before_the_tower_keys_reads_as_the_clip_towers():
    c = retrieval.model_config("vit_b16")
    for block, key in (("vision", "tower"), ("vision", "temporal_fix"), ("text", "tower"),
                       ("text", "vocab_file"), ("text", "max_positions")):
        del c[block][key]
    retrieval.fill_added_keys(c)
    config_lib.validate_model(c)
    assert (c.vision.tower, c.text.tower, c.vision.temporal_fix) == ("vit", "clip", "bilinear")
