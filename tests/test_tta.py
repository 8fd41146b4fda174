"""Test-time augmentation as ContextRefine-CLIP describes it and torchvision runs it: each view
on small frames against hand-computed pixels, and the aggregation of the views' embeddings
(docs/design.md, Test-time augmentation)."""

import numpy as np
import pytest
from PIL import Image

from tempret_jax import config as config_lib, embedding
from tempret_jax.data import pipeline, views
from tempret_jax.data.views import View, center_view

MEAN = views.MEAN_PIXEL


def _frame(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _bilinear(image, size):
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


# ---------------------------------------------------------------------------------------------
# Views.


def test_the_centre_crop_is_torchvision_resize_then_center_crop():
    frame = _frame(8, 11)
    # Short side already 8: no resize; the 3 extra columns split at int(round(1.5)) = 2.
    np.testing.assert_array_equal(center_view(frame, 8, View()), frame[:, 2:10])
    wide = _frame(8, 13)  # 5 extra: int(round(2.5)) = 2 (half to even, as Python rounds)
    np.testing.assert_array_equal(center_view(wide, 8, View()), wide[:, 2:10])
    tall = _frame(9, 8)  # 1 extra row: int(round(0.5)) = 0
    np.testing.assert_array_equal(center_view(tall, 8, View()), tall[:8])
    # 6 x 9 -> short side 4: the long side is int(4 * 9 / 6) = 6, then columns 1..4.
    big = _frame(6, 9)
    resized = np.asarray(Image.fromarray(big).resize((6, 4), Image.BILINEAR))
    np.testing.assert_array_equal(center_view(big, 4, View()), resized[:, 1:5])


def test_flip_reverses_the_columns_of_the_centre_crop():
    frame = _frame(8, 12)
    centre = center_view(frame, 8, View())
    np.testing.assert_array_equal(center_view(frame, 8, View(flip=True)), centre[:, ::-1])
    np.testing.assert_array_equal(center_view(frame, 8, View(scale=0.875, flip=True)),
                                  center_view(frame, 8, View(scale=0.875))[:, ::-1])


def test_scale_one_is_the_original_view():
    frame = _frame(10, 17)
    np.testing.assert_array_equal(center_view(frame, 8, View(scale=1.0)),
                                  center_view(frame, 8, View()))
    assert views.parse_view("scale=1.0") == View()


def test_scale_above_one_crops_the_centre_of_the_upscaled_crop():
    frame = _frame(16, 20)
    centre = center_view(frame, 16, View())
    # 1.125 x 16 = 18: the 18 x 18 resize, cut from int(round(1.0)) = 1.
    np.testing.assert_array_equal(center_view(frame, 16, View(scale=1.125)),
                                  _bilinear(centre, 18)[1:17, 1:17])
    # A border 2 px wide is cut away at 1.5x (24 x 24, cut from 4: source pixels from 2.5 on).
    ring = np.full((16, 16, 3), 200, np.uint8)
    ring[2:-2, 2:-2] = 40
    np.testing.assert_array_equal(center_view(ring, 16, View(scale=1.5)), 40)


def test_scale_below_one_is_the_shrunk_crop_padded_with_the_mean_colour():
    frame = _frame(16, 24)
    centre = center_view(frame, 16, View())
    small = center_view(frame, 16, View(scale=0.875))  # 14 x 14, 1 px of padding each side
    np.testing.assert_array_equal(small[1:15, 1:15], _bilinear(centre, 14))
    for border in (small[0], small[-1], small[:, 0], small[:, -1]):
        np.testing.assert_array_equal(border, np.broadcast_to(MEAN, border.shape))
    # Odd padding (8 -> 7): torchvision puts the extra pixel after (bottom, right).
    odd = center_view(_frame(8, 8), 8, View(scale=0.875))
    np.testing.assert_array_equal(odd[:7, :7], _bilinear(_frame(8, 8), 7))
    assert (odd[7] == MEAN).all() and (odd[:, 7] == MEAN).all()
    # The padding normalises to about 0, torchvision's zero padding of the normalised input.
    np.testing.assert_allclose(pipeline.Normalize()(small[:1]), 0, atol=0.004)


def test_the_default_views_are_the_papers_with_one_x_counted_twice():
    config = config_lib.default_config()
    parsed = tuple(views.parse_view(s) for s in config.eval.tta_views)
    assert parsed == views.TTA_VIEWS == (View(), View(flip=True), View(scale=0.875), View(),
                                         View(scale=1.125))
    distinct, weights = embedding.distinct_views(parsed)
    assert distinct == (View(), View(flip=True), View(scale=0.875), View(scale=1.125))
    np.testing.assert_array_equal(weights, [2, 1, 1, 1])
    # The centre crop comes first wherever it is listed: it gives the gallery and the tokens.
    distinct, weights = embedding.distinct_views((View(flip=True), View(scale=0.5), View()))
    assert distinct == (View(), View(flip=True), View(scale=0.5))
    assert embedding.distinct_views((View(flip=True),))[0] == (View(flip=True),)


# ---------------------------------------------------------------------------------------------
# Aggregation.


def _refining_embed(model, params, features, gallery, modality, chunk=1024):
    """A stand-in for a model with refinement: depends on the gallery, then normalises."""
    x = features + gallery.mean(axis=0)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def per_view(monkeypatch):
    monkeypatch.setattr(embedding, "embed", _refining_embed)
    rng = np.random.default_rng(1)
    return rng.normal(size=(5, 3, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(
        np.float32)


def test_embeddings_mean_is_the_mean_of_each_views_unit_embedding_not_renormalised(per_view):
    features, text_gallery = per_view
    weights = np.array([2, 1, 1], np.float32)  # the centre crop listed twice
    video, gallery = embedding.combine_views(None, None, features, weights, text_gallery,
                                             "embeddings_mean")
    units = [_refining_embed(None, None, features[:, k], text_gallery, "video") for k in range(3)]
    np.testing.assert_allclose(video, (2 * units[0] + units[1] + units[2]) / 4, rtol=1e-6)
    assert np.all(np.linalg.norm(video, axis=1) < 1 - 1e-3)  # a mean of unit vectors
    np.testing.assert_array_equal(gallery, features[:, 0])  # the centre view's features


def test_features_mean_embeds_the_mean_feature_once(per_view):
    features, text_gallery = per_view
    weights = np.array([2, 1, 1], np.float32)
    video, gallery = embedding.combine_views(None, None, features, weights, text_gallery,
                                             "features_mean")
    mean = (2 * features[:, 0] + features[:, 1] + features[:, 2]) / 4
    np.testing.assert_allclose(gallery, mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(video, _refining_embed(None, None, mean, text_gallery, "video"),
                               rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(video, axis=1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="eval.tta_reduce"):
        embedding.combine_views(None, None, features, weights, text_gallery, "sum")


def test_one_view_is_the_plain_embedding_either_way(per_view):
    features, text_gallery = per_view
    one = features[:, :1]
    for reduce in config_lib.TTA_REDUCE:
        video, gallery = embedding.combine_views(None, None, one, np.ones(1, np.float32),
                                                 text_gallery, reduce)
        np.testing.assert_array_equal(gallery, one[:, 0])
        np.testing.assert_array_equal(video, _refining_embed(None, None, one[:, 0],
                                                             text_gallery, "video"))


def test_the_reductions_are_validated_by_name():
    config = config_lib.default_config()
    assert config.eval.tta_reduce == "embeddings_mean"
    config.eval.tta_reduce = "mean"  # before #18: the mean of features, now 'features_mean'
    with pytest.raises(config_lib.ConfigError, match="eval.tta_reduce: expected one of "
                       r"\('embeddings_mean', 'features_mean'\), got 'mean'"):
        config_lib.validate(config, num_devices=8)
