"""EgoVLP parity with its authors' code: a tiny Frozen-in-Time built with EgoVLP's own classes
(SpaceTimeTransformer, FrozenInTime) and transformers' DistilBertModel, random weights, saved
as EgoVLP's trainer saves it (its pickled ConfigParser included; generator
tools/golden/make_egovlp_golden.py, files in tests/data/golden/egovlp/), converted with the
README's command, gives EgoVLP's video and text embeddings to 2e-5."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempret_jax import checkpoint, convert, pretrained, state
from tempret_jax.models import retrieval, space_time

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden" / "egovlp"
TOL = 2e-5


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from tools import convert_checkpoint as cli

    out = tmp_path_factory.mktemp("egovlp") / "converted"
    assert cli.main([str(GOLDEN / "egovlp_tiny.pth"), str(out), "--vision_heads", "4",
                     "--text_heads", "4"]) == 0
    return out


@pytest.fixture(scope="module")
def reference():
    return np.load(GOLDEN / "reference.npz")


def _frames(video):
    """EgoVLP's (B, F, C, H, W) -> ours (B, F, H, W, C)."""
    return np.ascontiguousarray(video.transpose(0, 1, 3, 4, 2))


def test_the_checkpoint_is_refused_by_torchs_safe_loader_but_read_here():
    torch = pytest.importorskip("torch")
    with pytest.raises(Exception, match="parse_config.ConfigParser"):
        torch.load(GOLDEN / "egovlp_tiny.pth", weights_only=True)
    source = convert.load_checkpoint(GOLDEN / "egovlp_tiny.pth")
    assert source.args["config"]["arch"]["type"] == "FrozenInTime"


def test_the_architecture_is_read_from_the_file(converted):
    c = convert.read_model_config(converted)
    assert (c.vision.tower, c.text.tower, c.embed_dim) == ("space_time", "distilbert", 16)
    assert (c.vision.width, c.vision.layers, c.vision.patch_size, c.vision.image_size,
            c.vision.num_frames) == (32, 2, 8, 32, 4)
    assert (c.text.vocab_size, c.text.width, c.text.layers, c.text.max_positions) == (
        64, 32, 2, 77)
    assert (c.vision.ln_eps, c.text.ln_eps, c.vision.temporal_fix) == (1e-6, 1e-12, "zeros")


def test_video_embeddings_equal_egovlps(converted, reference):
    model = pretrained.load(converted)
    got = model.encode_video(_frames(reference["video"]))
    np.testing.assert_allclose(np.asarray(got), reference["video_embeddings"], rtol=0, atol=TOL)


def test_the_pooled_video_feature_before_the_projection_equals_egovlps(converted, reference):
    model = pretrained.load(converted)
    v = model.config.vision
    tower = space_time.SpaceTimeTransformer(
        image_size=v.image_size, patch_size=v.patch_size, width=v.width, layers=v.layers,
        heads=v.heads, num_frames=v.num_frames, project=False,
        stack=space_time.StackSettings(mlp_kind="gelu", ln_eps=1e-6))
    out = tower.apply({"params": model.params["visual"]}, jnp.asarray(_frames(
        reference["video"])))
    np.testing.assert_allclose(np.asarray(out["embedding"]), reference["video_features"],
                               rtol=0, atol=TOL)


def test_fewer_frames_than_the_temporal_embedding_equal_egovlps(converted, reference):
    model = pretrained.load(converted)
    got = model.model.apply({"params": model.params}, jnp.asarray(_frames(reference["video2"])),
                            method=retrieval.RetrievalModel.encode_video)["features"]
    np.testing.assert_allclose(np.asarray(got), reference["video2_embeddings"], rtol=0, atol=TOL)


@pytest.mark.parametrize("fix, egovlp_name", [("zeros", "zeros"),
                                              ("bilinear_corners", "bilinear")])
def test_eight_frames_inflated_as_egovlp_loads_them(converted, reference, fix, egovlp_name):
    config = convert.read_model_config(converted)
    config.vision.update(num_frames=8, temporal_fix=fix)
    model = retrieval.RetrievalModel.from_config(config)
    video = jnp.asarray(_frames(reference["video8"]))
    abstract = jax.eval_shape(model.init, jax.random.key(0), video, jnp.zeros((1, 4), jnp.int32))
    params, _ = state.load_params(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                               abstract["params"]), converted,
                                  temporal_fix=fix)
    np.testing.assert_allclose(params["visual"]["temporal_embedding"],
                               reference[f"temporal_embed_{egovlp_name}"], rtol=0, atol=1e-6)
    got = model.apply({"params": params}, video, method=model.encode_video)["features"]
    np.testing.assert_allclose(np.asarray(got), reference[f"video8_{egovlp_name}_embeddings"],
                               rtol=0, atol=TOL)


def test_text_embeddings_equal_egovlps_with_and_without_the_mask(converted, reference):
    model = pretrained.load(converted)
    ids, mask = reference["text_ids"], reference["text_mask"].astype(bool)
    np.testing.assert_array_equal(mask, ids != 0)  # [PAD] is 0: the mask is implied
    for got in (model.encode_text(ids, mask), model.encode_text(ids)):
        np.testing.assert_allclose(np.asarray(got), reference["text_embeddings"], rtol=0,
                                   atol=TOL)


def test_every_real_tokens_hidden_state_equals_distilberts(converted, reference):
    model = pretrained.load(converted)
    out = model.model.apply({"params": model.params}, jnp.asarray(reference["text_ids"]),
                            method=retrieval.RetrievalModel.encode_text)
    mask = reference["text_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(out["tokens"])[mask], reference["text_hidden"][mask],
                               rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(out["tokens"])[:, 0], reference["text_features"],
                               rtol=0, atol=TOL)


def test_a_scanned_model_loads_the_converted_layers(converted, reference):
    config = convert.read_model_config(converted)
    config.scan_layers = True
    model = retrieval.RetrievalModel.from_config(config)
    video = jnp.asarray(_frames(reference["video"]))
    ids = jnp.asarray(reference["text_ids"])
    abstract = jax.eval_shape(model.init, jax.random.key(0), video, ids)["params"]
    params, _ = state.load_params(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract),
                                  converted)
    assert "resblocks" in params["visual"] and "resblocks" in params["text"]
    out = model.apply({"params": params}, video, ids)
    np.testing.assert_allclose(np.asarray(out["video"]), np.asarray(retrieval.l2_normalize(
        reference["video_embeddings"])), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(out["text"]), np.asarray(retrieval.l2_normalize(
        reference["text_embeddings"])), rtol=0, atol=TOL)


def test_every_tensor_of_the_file_is_converted(converted):
    source = convert.load_checkpoint(GOLDEN / "egovlp_tiny.pth")
    params = checkpoint.flatten(checkpoint.read_params(converted).params)
    weights = sum(int(np.prod(v.shape)) for v in source.state_dict.values())
    # ours: q/k/v split from the fused qkv (same count), plus the fixed logit scale
    assert sum(int(np.prod(v.shape)) for v in params.values()) == weights + 1
