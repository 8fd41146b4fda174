"""The composed retrieval model, its config, layer-stack options and embedding resampling."""

import functools

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp

from tempret_jax import config as config_lib
from tempret_jax import param_layout
from tempret_jax.models import layers, video
from tempret_jax.models.retrieval import RetrievalModel, model_config


def tiny(**overrides):
    """The tiny preset with overrides `section__key=value`. Layer stacks are scanned: one
    compilation per stack keeps these tests fast (the unrolled path is in test_models_towers)."""
    config = model_config("tiny")
    config.scan_layers = True
    for key, value in overrides.items():
        section, _, leaf = key.rpartition("__")
        (config[section] if section else config)[leaf] = value
    return config


def inputs(batch=3, frames=4, seed=0):
    video_key, text_key = jax.random.split(jax.random.key(seed))
    clips = jax.random.normal(video_key, (batch, frames, 32, 32, 3))
    ids = jax.random.randint(text_key, (batch, 77), 1, 49406)
    lengths = jnp.array([5, 77, 12][:batch])
    positions = jnp.arange(77)[None]
    ids = jnp.where(positions == lengths[:, None] - 1, 49407, ids)   # <eot>
    ids = jnp.where(positions >= lengths[:, None], 0, ids).at[:, 0].set(49406)
    return clips, ids


CONFIGS = {
    "avion": {},
    "eva02_at": {"vision__pos_embed": "learned+rope", "vision__mlp": "swiglu",
                 "vision__sub_ln": True, "scan_layers": False, "remat": True},
    "tempret": {"vision__frame_mode": True, "temporal__enabled": True,
                "cross_encoder__enabled": True, "cross_encoder__video_tokens": "frame"},
    "contextrefine": {"refine__enabled": True, "cross_encoder__enabled": True},
    "frame_mean": {"vision__frame_mode": True},
}


@functools.lru_cache(maxsize=None)
def initialised(name):
    """(model, variables, outputs on `inputs()`) of a named tiny config, built once per session."""
    model = RetrievalModel.from_config(tiny(**CONFIGS[name]))
    clips, ids = inputs()
    variables = jax.jit(model.init)(jax.random.key(1), clips, ids)
    return model, variables, jax.jit(model.apply)(variables, clips, ids)


def apply(model, variables, *args, method):
    return jax.jit(functools.partial(model.apply, method=method))(variables, *args)


def assert_unit_rows(x):
    np.testing.assert_allclose(np.linalg.norm(np.asarray(x, np.float64), axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["avion", "eva02_at", "tempret", "contextrefine"])
def test_retrieval_model_outputs_unit_norm_embeddings(name):
    model, variables, out = initialised(name)
    config = model.config
    assert out["video"].shape == out["text"].shape == (3, config.embed_dim)
    assert_unit_rows(out["video"])
    assert_unit_rows(out["text"])
    np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)
    params = variables["params"]
    assert ("temporal" in params) == config.temporal.enabled
    assert ("refine" in params) == ("video_head" in params) == config.refine.enabled
    assert ("cross_encoder" in params) == ("itm_logits" in out) == config.cross_encoder.enabled
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_encode_then_embed_equals_call():
    model, variables, out = initialised("contextrefine")
    clips, ids = inputs()
    v = apply(model, variables, clips, method=model.encode_video)
    t = apply(model, variables, ids, method=model.encode_text)
    assert v["tokens"].shape == (3, 4 * 16, model.config.vision.width)
    assert t["tokens"].shape == (3, 77, model.config.text.width)
    video_emb = apply(model, variables, v["features"], t["features"], method=model.embed_video)
    text_emb = apply(model, variables, t["features"], v["features"], method=model.embed_text)
    np.testing.assert_allclose(video_emb, out["video"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(text_emb, out["text"], rtol=1e-5, atol=1e-6)
    # Rerank scoring from the cached tokens: text query i against candidate videos [i, i+1].
    candidates = jnp.array([[0, 1], [1, 2], [2, 0]])
    logits = apply(model, variables, t["tokens"][:, None], t["mask"][:, None],
                   v["tokens"][candidates], method=model.score_pairs)
    assert logits.shape == (3, 2)
    np.testing.assert_allclose(logits[:, 0], out["itm_logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="text_gallery is required"):
        model.apply(variables, v["features"], method=model.embed_video)


def test_frame_mode_without_temporal_transformer_averages_frames():
    model, variables, _ = initialised("frame_mean")
    clips, _ = inputs()
    per_frame = apply(model, variables, clips, method=lambda m, x: m.visual(x)["embedding"])
    features = apply(model, variables, clips, method=model.encode_video)["features"]
    np.testing.assert_allclose(features, per_frame.mean(axis=1), rtol=1e-5, atol=1e-6)


def perturbed(variables, scale=0.1, seed=2):
    """Every parameter plus noise, so that zero-initialised branches (TempRet's out_proj, the
    temporal embedding) are live and the model depends on frame order."""
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                        for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("name", ["avion", "eva02_at", "tempret", "frame_mean"])
def test_reversed_features_are_the_features_of_the_reversed_clip(name):
    """encode_video(with_reversed=True) adds the features of every clip played backwards, in
    joint mode (one tower pass on both) and in frame mode (per-frame embeddings reused)."""
    model, variables, _ = initialised(name)
    variables = perturbed(variables)
    clips, _ = inputs()
    encode = lambda m, x, r: m.encode_video(x, r)  # noqa: E731
    both = jax.jit(functools.partial(model.apply, method=encode), static_argnums=2)(
        variables, clips, True)
    forward = apply(model, variables, clips, method=model.encode_video)
    backward = apply(model, variables, clips[:, ::-1], method=model.encode_video)
    np.testing.assert_allclose(both["features"], forward["features"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(both["tokens"], forward["tokens"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(both["reversed_features"], backward["features"], rtol=1e-4,
                               atol=1e-5)
    differs = not np.allclose(forward["features"], backward["features"], rtol=1e-3, atol=1e-4)
    assert differs == (name != "frame_mean")  # only frame averaging ignores the order


def test_bfloat16_compute_runs_with_float32_params_and_is_close_to_float32():
    _, variables, f32 = initialised("contextrefine")
    model = RetrievalModel.from_config(tiny(dtype="bfloat16", **CONFIGS["contextrefine"]))
    bf16 = jax.jit(model.apply)(variables, *inputs())
    assert bf16["text_tokens"].dtype == jnp.bfloat16
    assert np.all(np.isfinite(bf16["itm_logits"]))
    np.testing.assert_allclose(np.linalg.norm(bf16["video"], axis=-1), 1.0, rtol=1e-3)
    # Cosine between the fp32 and bf16 embeddings of the same inputs.
    assert np.all(np.sum(f32["video"] * bf16["video"], -1) > 0.99)
    assert np.all(np.sum(f32["text"] * bf16["text"], -1) > 0.99)
    np.testing.assert_allclose(bf16["itm_logits"], f32["itm_logits"], atol=0.1)


@pytest.mark.parametrize("key, value, message", [
    ("vision__pos_embed", "sincos", "vision.pos_embed"),
    ("temporal__enabled", True, "temporal.enabled: expected vision.frame_mode=True"),
    ("dtype", "float64", "dtype"),
    ("attention_impl", "flash", "attention_impl"),
    ("text__heads", 5, "text.heads"),
    ("cross_encoder__video_tokens", "clip", "cross_encoder.video_tokens"),
    ("remat_policy", "save_everything", "remat_policy"),
    ("init_temperature", 0.0, "init_temperature: expected > 0"),
])
def test_bad_config_names_the_key(key, value, message):
    with pytest.raises(config_lib.ConfigError, match=f"model.{message}"):
        config_lib.validate_model(tiny(**{key: value}))


@pytest.mark.parametrize("temperature", [0.07, 0.05])
def test_a_fresh_logit_scale_starts_at_one_over_init_temperature(temperature):
    model = RetrievalModel(tiny(init_temperature=temperature))
    video, tokens = inputs()
    got = model.init(jax.random.PRNGKey(0), video, tokens)["params"]["logit_scale"]
    np.testing.assert_allclose(np.exp(got), 1 / temperature, rtol=1e-6)


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="model preset"):
        model_config("vit_h14")


@pytest.mark.parametrize("preset, vision, text", [
    ("vit_b16", (768, 12, 12, 16), (512, 12, 8)), ("vit_l14", (1024, 24, 16, 14), (768, 12, 12))])
def test_presets_have_clip_sizes(preset, vision, text):
    c = model_config(preset)
    assert (c.vision.width, c.vision.layers, c.vision.heads, c.vision.patch_size) == vision
    assert (c.text.width, c.text.layers, c.text.heads) == text
    assert c.embed_dim == {"vit_b16": 512, "vit_l14": 768}[preset]


def stack_layers(params, num_layers):
    """Unrolled `resblocks_i` -> scanned `resblocks` (leading layer axis)."""
    blocks = [params.pop(f"resblocks_{i}") for i in range(num_layers)]
    params["resblocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return params


def test_scanned_and_rematerialised_stack_equals_unrolled():
    kw = dict(num_layers=3, num_heads=2, cross_attention=True)
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    context = jax.random.normal(jax.random.key(1), (2, 4, 8))
    mask = jnp.arange(5)[None, None, None] < 4
    unrolled = layers.Transformer(settings=layers.StackSettings(mlp_ratio=2.0), **kw)
    params = unrolled.init(jax.random.key(2), x, mask=mask, context=context)["params"]
    scanned = layers.Transformer(settings=layers.StackSettings(
        mlp_ratio=2.0, scan=True, remat=True, remat_policy="dots_saveable"), **kw)
    stacked = stack_layers(dict(params), 3)
    assert jax.tree.map(np.shape, stacked) == jax.tree.map(
        np.shape, scanned.init(jax.random.key(2), x, mask=mask, context=context)["params"])

    def value_and_grad(module, p):
        loss = lambda p: jnp.sum(module.apply({"params": p}, x, mask=mask, context=context) ** 2)
        return jax.jit(jax.value_and_grad(loss))(p)

    loss_unrolled, g_unrolled = value_and_grad(unrolled, params)
    loss_scanned, g_scanned = value_and_grad(scanned, stacked)
    np.testing.assert_allclose(loss_scanned, loss_unrolled, rtol=1e-5)
    # atol: gradients that are 0 in exact arithmetic (e.g. of the key biases) are rounding noise.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5),
                 g_scanned, stack_layers(dict(g_unrolled), 3))


def test_resample_spatial_position_embedding():
    emb = np.random.default_rng(1).normal(size=(1 + 7 * 7, 8)).astype(np.float32)
    linear = video.resample_spatial_position_embedding(emb, (14, 14), method="linear")
    grid = torch.from_numpy(emb[1:].reshape(7, 7, 8).transpose(2, 0, 1))[None]
    ref = torch.nn.functional.interpolate(grid, size=(14, 14), mode="bilinear",
                                          align_corners=False)[0].numpy()
    assert linear.shape == (1 + 14 * 14, 8)
    np.testing.assert_array_equal(linear[0], emb[0])                    # class row kept
    np.testing.assert_allclose(linear[1:], ref.transpose(1, 2, 0).reshape(-1, 8), atol=1e-5)
    np.testing.assert_allclose(video.resample_spatial_position_embedding(emb, (7, 7)), emb,
                               atol=1e-5)
    assert video.resample_spatial_position_embedding(emb, (16, 12)).shape == (1 + 16 * 12, 8)


def test_resampled_embeddings_load_into_a_longer_model():
    short = video.VisionTransformer(image_size=16, patch_size=8, width=16, layers=1, heads=2,
                                    output_dim=8, num_frames=4)
    params = jax.jit(short.init)(jax.random.key(0), jnp.zeros((1, 4, 16, 16, 3)))["params"]
    params = dict(params, temporal_embedding=param_layout.inflate_temporal_embedding(
        params["temporal_embedding"], 16))
    long = short.clone(num_frames=16)
    out = jax.jit(long.apply)({"params": params}, jnp.zeros((1, 16, 16, 16, 3)))
    assert out["embedding"].shape == (1, 8)
    with pytest.raises(ValueError, match="load the parameters into a model of num_frames=8"):
        short.apply({"params": params}, jnp.zeros((1, 8, 16, 16, 3)))
