"""ContextRefine-CLIP's cross-modal context refinement (models/refine.py), equation by equation.

Every reference is computed by hand in numpy (float64) from the module's own parameters and
compared with the module's float32 output (tolerance 2e-5); intermediates come from flax's
`capture_intermediates`, so each equation is checked on the module's own inputs to it.
"""

import importlib.util
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tempret_jax import checkpoint, embedding, state, step
from tempret_jax import config as config_lib
from tempret_jax.models import refine
from tempret_jax.models.retrieval import RetrievalModel, model_config

TOL = dict(rtol=2e-5, atol=2e-5)
D_V, D_T, D_A, HEADS = 12, 10, 16, 8  # query widths differ from each other and from D_a
LN_EPS = 1e-5


# -- numpy references -------------------------------------------------------------------------

def np_tree(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def dense(p, x):
    return x @ p["kernel"] + p["bias"]


def layer_norm(p, x):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * p["scale"] + p["bias"]


def gelu(x):  # exact (erf) GELU, as torch.nn.GELU()
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def silu(x):
    return x / (1 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mha(q, k, v, heads, mask=None):
    """Eq (4) before W_O: q (N, D_a), k and v (G, D_a) -> (N, D_a), head i on columns i*K.."""
    outs = []
    for qi, ki, vi in zip(*(np.split(a, heads, axis=-1) for a in (q, k, v))):
        scores = qi @ ki.T / math.sqrt(qi.shape[-1])
        if mask is not None:
            scores = np.where(mask[None], scores, -np.inf)
        outs.append(softmax(scores) @ vi)
    return np.concatenate(outs, axis=-1)


def gated_ffn(p, x):
    return dense(p["w3"], silu(dense(p["w1"], x)) * dense(p["w2"], x))


def block(p, x, gallery, heads, mask=None):
    """One direction, Eqs (1)-(6), from raw inputs."""
    a = p["cross_attn"]
    attended = dense(a["out"], mha(dense(a["q"], x), dense(a["k"], gallery),
                                   dense(a["v"], gallery), heads, mask))
    h = layer_norm(p["ln_1"], x + attended)
    return layer_norm(p["ln_2"], h + gated_ffn(p["ffn"], h))


def head(p, x):
    return dense(p["fc2"], gelu(dense(p["fc1"], x)))


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- fixtures ---------------------------------------------------------------------------------

def randomize(params, key, scale=0.3):
    """Every parameter random (LayerNorm scales around 1), so that no term is trivial."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [
        (1.0 if "scale" in jax.tree_util.keystr(path) else 0.0)
        + scale * jax.random.normal(k, x.shape) for (path, x), k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def data():
    k = jax.random.split(jax.random.key(0), 2)
    return jax.random.normal(k[0], (6, D_V)), jax.random.normal(k[1], (5, D_T))


@pytest.fixture(scope="module")
def block_setup(data):
    """A video-direction block (videos attend over texts) and its intermediates."""
    videos, texts = data
    module = refine.RefineBlock(dim=D_A, heads=HEADS, mlp_ratio=2.0)
    params = randomize(module.init(jax.random.key(1), videos, texts), jax.random.key(2))
    out, inter = module.apply(params, videos, texts, capture_intermediates=True,
                              mutable=["intermediates"])
    inter = jax.tree.map(lambda x: np.asarray(x, np.float64), inter["intermediates"])
    called = lambda *path: _at(inter, path)["__call__"][0]  # noqa: E731
    return module, params, np_tree(params["params"]), out, called


def _at(tree, path):
    for name in path:
        tree = tree[name]
    return tree


@pytest.fixture(scope="module")
def both(data):
    videos, texts = data
    module = refine.ContextRefinement(dim=D_A, heads=HEADS)
    params = randomize(module.init(jax.random.key(3), videos, texts), jax.random.key(4))
    return module, params


# -- one test per equation --------------------------------------------------------------------

def test_eq_1_to_3_project_queries_keys_and_values_to_the_attention_dim(data, block_setup):
    videos, texts = np_tree(data)
    _, _, p, _, called = block_setup
    a = p["cross_attn"]
    assert a["q"]["kernel"].shape == (D_V, D_A) and a["k"]["kernel"].shape == (D_T, D_A)
    np.testing.assert_allclose(called("cross_attn", "q"), dense(a["q"], videos), **TOL)
    np.testing.assert_allclose(called("cross_attn", "k"), dense(a["k"], texts), **TOL)
    np.testing.assert_allclose(called("cross_attn", "v"), dense(a["v"], texts), **TOL)


def test_eq_4_multi_head_attention_with_8_heads(block_setup):
    _, _, p, _, called = block_setup
    q, k, v = (called("cross_attn", n) for n in "qkv")
    expected = dense(p["cross_attn"]["out"], mha(q, k, v, HEADS))
    np.testing.assert_allclose(called("cross_attn"), expected, **TOL)
    assert p["cross_attn"]["out"]["kernel"].shape == (D_A, D_V)  # back to the query's width
    one_head = dense(p["cross_attn"]["out"], mha(q, k, v, 1))
    assert np.abs(one_head - expected).max() > 1e-3  # the 8 heads are separate softmaxes


def test_eq_5_residual_with_the_original_query_then_layernorm(data, block_setup):
    videos = np_tree(data[0])
    _, _, p, _, called = block_setup
    expected = layer_norm(p["ln_1"], videos + called("cross_attn"))
    np.testing.assert_allclose(called("ln_1"), expected, **TOL)


def test_eq_6_gated_ffn_residual_then_layernorm(block_setup):
    _, _, p, out, called = block_setup
    fused = called("ln_1")
    np.testing.assert_allclose(called("ffn"), gated_ffn(p["ffn"], fused), **TOL)
    assert p["ffn"]["w1"]["kernel"].shape == (D_V, 2 * D_V)  # hidden int(D * mlp_ratio)
    np.testing.assert_allclose(out, layer_norm(p["ln_2"], fused + gated_ffn(p["ffn"], fused)),
                               **TOL)


def test_block_from_raw_inputs(data, block_setup):
    videos, texts = np_tree(data)
    _, _, p, out, _ = block_setup
    np.testing.assert_allclose(out, block(p, videos, texts, HEADS), **TOL)


def test_the_symmetric_direction_refines_text_over_videos_with_its_own_parameters(data, both):
    module, params = both
    videos, texts = data
    p = np_tree(params["params"])
    v, t = module.apply(params, videos, texts)
    assert v.shape == (6, D_V) and t.shape == (5, D_T)
    assert p["text"]["cross_attn"]["k"]["kernel"].shape == (D_V, D_A)
    np.testing.assert_allclose(v, block(p["video"], *np_tree((videos, texts)), HEADS), **TOL)
    np.testing.assert_allclose(t, block(p["text"], *np_tree((texts, videos)), HEADS), **TOL)


def test_ffn_none_is_the_papers_ablation_without_eq_6(data):
    videos, texts = data
    module = refine.RefineBlock(dim=D_A, heads=HEADS, ffn="none")
    params = randomize(module.init(jax.random.key(5), videos, texts), jax.random.key(6))
    assert set(params["params"]) == {"cross_attn", "ln_1"}
    p = np_tree(params["params"])
    a = p["cross_attn"]
    x, g = np_tree((videos, texts))
    attended = dense(a["out"], mha(dense(a["q"], x), dense(a["k"], g), dense(a["v"], g), HEADS))
    np.testing.assert_allclose(module.apply(params, videos, texts),
                               layer_norm(p["ln_1"], x + attended), **TOL)


@pytest.mark.parametrize("hidden", [0, 7])
def test_mlp_head_is_two_layers_with_gelu(data, hidden):
    videos = data[0]
    module = refine.ProjectionHead(out_dim=4, hidden=hidden)
    params = randomize(module.init(jax.random.key(7), videos), jax.random.key(8))
    p = np_tree(params["params"])
    assert set(p) == {"fc1", "fc2"}
    assert p["fc1"]["kernel"].shape == (D_V, hidden or D_V) and p["fc2"]["bias"].shape == (4,)
    np.testing.assert_allclose(module.apply(params, videos), head(p, np_tree(videos)), **TOL)


# -- dropout, gallery -------------------------------------------------------------------------

def test_dropout_only_in_training(data, both):
    module, params = both  # dropout 0.1, the paper's
    videos, texts = data
    run = lambda det, seed=0: module.apply(  # noqa: E731
        params, videos, texts, deterministic=det, rngs={"dropout": jax.random.key(seed)})
    eval_v, eval_t = module.apply(params, videos, texts)  # the default: deterministic, no rng
    p = np_tree(params["params"])
    np.testing.assert_allclose(eval_v, block(p["video"], *np_tree((videos, texts)), HEADS), **TOL)
    np.testing.assert_allclose(run(True)[0], eval_v, rtol=0, atol=0)
    train_v, train_t = run(False)
    assert np.abs(train_v - eval_v).max() > 1e-3 and np.abs(train_t - eval_t).max() > 1e-3
    np.testing.assert_allclose(run(False)[0], train_v, rtol=0, atol=0)  # same rng, same masks
    assert np.abs(run(False, seed=1)[0] - train_v).max() > 1e-3
    no_dropout = refine.ContextRefinement(dim=D_A, heads=HEADS, dropout=0.0)
    np.testing.assert_allclose(no_dropout.apply(params, videos, texts, deterministic=False)[0],
                               eval_v, rtol=0, atol=0)


def test_gallery_mask_drops_padded_rows(data, both):
    module, params = both
    videos, texts = data
    padded = jnp.concatenate([texts, 100.0 * jnp.ones((3, D_T))])
    mask = jnp.arange(8) < 5
    a = module.apply(params, videos, texts, method=module.refine_video)
    b = module.apply(params, videos, padded, mask, method=module.refine_video)
    np.testing.assert_allclose(b, a, **TOL)
    p = np_tree(params["params"])
    np.testing.assert_allclose(b, block(p["video"], *np_tree((videos, padded)), HEADS,
                                        np.asarray(mask)), **TOL)


def test_result_is_independent_of_gallery_order_and_query_chunks(data, both):
    module, params = both
    videos, texts = data
    full = module.apply(params, videos, texts, method=module.refine_video)
    shuffled = module.apply(params, videos, texts[np.random.default_rng(0).permutation(5)],
                            method=module.refine_video)
    np.testing.assert_allclose(shuffled, full, **TOL)
    chunks = [module.apply(params, videos[i:i + 2], texts, method=module.refine_video)
              for i in range(0, 6, 2)]
    np.testing.assert_allclose(np.concatenate(chunks), full, **TOL)


# -- the model --------------------------------------------------------------------------------

def tiny(refine_enabled=True):
    """The tiny preset with refinement, the text tower narrower than the vision tower."""
    c = model_config("tiny")
    c.scan_layers = True
    c.refine.enabled = refine_enabled
    c.text.width = 24
    return c


def inputs(batch=3):
    k = jax.random.split(jax.random.key(9))
    clips = jax.random.normal(k[0], (batch, 4, 32, 32, 3))
    ids = jax.random.randint(k[1], (batch, 77), 1, 49406)
    ids = jnp.where(jnp.arange(77) == 5, 49407, ids)
    return clips, jnp.where(jnp.arange(77) > 5, 0, ids).at[:, 0].set(49406)


@pytest.fixture(scope="module")
def model_setup():
    model = RetrievalModel.from_config(tiny())
    variables = jax.jit(model.init)(jax.random.key(10), *inputs())
    return model, randomize(variables, jax.random.key(11), scale=0.1)


def test_refinement_runs_before_projection(model_setup):
    model, variables = model_setup
    params = variables["params"]
    assert "proj" not in params["visual"] and "text_projection" not in params["text"]
    plain = jax.eval_shape(RetrievalModel.from_config(tiny(False)).init, jax.random.key(0),
                           *inputs())["params"]
    assert "proj" in plain["visual"] and "text_projection" in plain["text"]
    clips, ids = inputs()
    v, inter = model.apply(variables, clips, method=model.encode_video,
                           capture_intermediates=True, mutable=["intermediates"])
    pooled = inter["intermediates"]["visual"]["ln_post"]["__call__"][0][:, 0]
    np.testing.assert_allclose(v["features"], pooled, rtol=0, atol=0)  # ln_post(class token)
    t = model.apply(variables, ids, method=model.encode_text)
    assert v["features"].shape == (3, 32) and t["features"].shape == (3, 24)  # D_v, D_t


def test_model_end_to_end_on_the_tiny_preset(model_setup):
    model, variables = model_setup
    clips, ids = inputs()
    out = jax.jit(model.apply)(variables, clips, ids)
    v = model.apply(variables, clips, method=model.encode_video)["features"]
    t = model.apply(variables, ids, method=model.encode_text)["features"]
    p, heads = np_tree(variables["params"]), model.config.refine.heads
    vf, tf = np_tree((v, t))
    expected_v = unit(head(p["video_head"], block(p["refine"]["video"], vf, tf, heads)))
    expected_t = unit(head(p["text_head"], block(p["refine"]["text"], tf, vf, heads)))
    assert out["video"].shape == out["text"].shape == (3, model.config.embed_dim)
    np.testing.assert_allclose(out["video"], expected_v, **TOL)
    np.testing.assert_allclose(out["text"], expected_t, **TOL)
    np.testing.assert_allclose(model.apply(variables, v, t, method=model.embed_video),
                               expected_v, **TOL)
    # Inference: the evaluator's chunked calls over the whole gallery, deterministic.
    np.testing.assert_allclose(embedding.embed(model, variables["params"], np.asarray(t),
                                               np.asarray(v), "text", chunk=2), expected_t, **TOL)
    train = model.apply(variables, clips, ids, False, rngs={"dropout": jax.random.key(0)})
    assert np.abs(train["video"] - out["video"]).max() > 1e-3


# -- training, checkpoints, config ------------------------------------------------------------

def synthetic_refine_config(dropout=0.1):
    path = pathlib.Path(__file__).parent.parent / "configs" / "synthetic.py"
    spec = importlib.util.spec_from_file_location("synthetic_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("joint,sms,test")
    c.model.refine.update(enabled=True, dropout=dropout)
    return c


def train_batch(c, rng):
    b, v = c.global_batch_size, c.model.vision
    verbs = rng.integers(0, 3, b)
    nouns = np.zeros((b, 300), bool)
    nouns[np.arange(b), rng.integers(0, 4, b)] = True
    tokens = np.zeros((b, 77), np.int32)
    tokens[:, 0], tokens[:, 1], tokens[:, 2] = 49406, 320 + verbs, 49407
    return {"video": rng.standard_normal((b, v.num_frames, v.image_size, v.image_size, 3),
                                         dtype=np.float32),
            "tokens": tokens, "pos_relevance": np.ones(b, np.float32), "clip_verb": verbs,
            "clip_nouns": nouns, "text_verb": verbs, "text_nouns": nouns}


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_a_train_step_with_refinement_runs_and_uses_the_dropout_rng(dropout):
    c = synthetic_refine_config(dropout)
    setup = state.TrainSetup(c)
    train_step = step.TrainStep(setup)
    train_state = setup.init_state()
    batch = train_batch(c, np.random.default_rng(0))
    other_rng = train_state.rng + 1
    loss_a, _, _ = train_step.gradients(train_state, batch)
    loss_b, _, _ = train_step.gradients(train_state.replace(rng=other_rng), batch)
    assert (abs(float(loss_a) - float(loss_b)) > 1e-6) == (dropout > 0)
    for _ in range(2):
        train_state, out = train_step(train_state, batch)
        assert np.isfinite(float(out["loss"]))
    assert int(train_state.step) == 2


def test_towers_load_from_a_checkpoint_with_projections(tmp_path):
    """configs/ek100_crclip_vitl14.py's init_from.include: the towers' weights load, the saved
    visual/proj and text/text_projection are not used, the refinement and heads start fresh."""
    clips, ids = inputs(1)
    saved = jax.jit(RetrievalModel.from_config(tiny(False)).init)(jax.random.key(12), clips,
                                                                  ids)["params"]
    checkpoint.save_params(tmp_path / "plain", saved)
    target = jax.jit(RetrievalModel.from_config(tiny()).init)(jax.random.key(13), clips,
                                                              ids)["params"]
    loaded, _ = state.load_params(target, tmp_path / "plain",
                                  include=r"^(visual|text|logit_scale)/")
    flat, flat_saved, flat_target = (checkpoint.flatten(x) for x in (loaded, saved, target))
    assert "visual/proj" in flat_saved and "visual/proj" not in flat
    for key, value in flat.items():
        source = flat_saved if key.startswith(("visual/", "text/")) else flat_target
        np.testing.assert_array_equal(value, source[key], err_msg=key)


@pytest.mark.parametrize("key, value, message", [
    ("dim", 0, "refine.dim: expected a positive int"),
    ("heads", 3, "refine.heads: expected a positive divisor of refine.dim=16"),
    ("dropout", 1.0, "refine.dropout: expected a rate in [0, 1)"),
    ("ffn", "glu", "refine.ffn: expected one of ('swiglu', 'geglu', 'none')"),
    ("mlp_ratio", 0.0, "refine.mlp_ratio: expected > 0"),
    ("head", "linear", "refine.head: expected one of ('mlp',)"),
    ("head_hidden", -1, "refine.head_hidden: expected an int >= 0"),
])
def test_a_bad_refine_value_is_one_line_naming_the_key(key, value, message):
    c = tiny()
    c.refine[key] = value
    with pytest.raises(config_lib.ConfigError, match=re.escape(f"model.{message}")):
        config_lib.validate_model(c)


def test_defaults_are_the_papers_and_old_configs_without_the_keys_still_validate():
    r = model_config("avion_l14").refine
    assert (r.dim, r.heads, r.dropout, r.ffn, r.head) == (512, 8, 0.1, "swiglu", "mlp")
    old = model_config("tiny")
    old.refine = ml_collections.ConfigDict(dict(enabled=False, heads=2, mlp_ratio=4.0))
    config_lib.validate_model(old)  # a disabled block saved before dim, dropout, ... existed
    old.refine.enabled = True
    with pytest.raises(config_lib.ConfigError, match="model.refine.dim: expected"):
        config_lib.validate_model(old)
