"""Saved parameters load into a model whatever their layer layout and number of frames."""

import numpy as np
import pytest
import torch

from tempret_jax import param_layout


@pytest.mark.parametrize("frames", [16, 8, 5])
def test_fewer_frames_inflate_as_avion_does(frames):
    # AVION inflate_positional_embeds, load_temporal_fix='bilinear': F.interpolate on
    # (1, 1, T0, D) to (T, D).
    emb = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(emb)[None, None], (frames, 8),
                                          mode="bilinear")[0, 0].numpy()
    np.testing.assert_allclose(param_layout.inflate_temporal_embedding(emb, frames), ref,
                               rtol=0, atol=1e-6)


def test_more_frames_are_cut_to_the_first_ones_and_equal_frames_are_kept():
    emb = np.arange(32, dtype=np.float32).reshape(8, 4)
    np.testing.assert_array_equal(param_layout.inflate_temporal_embedding(emb, 3), emb[:3])
    np.testing.assert_array_equal(param_layout.inflate_temporal_embedding(emb, 8), emb)


def _unrolled(layers):
    return {f"visual/transformer/resblocks_{i}/ln_1/scale": np.full((4,), i, np.float32)
            for i in range(layers)} | {"visual/proj": np.ones((4, 2), np.float32)}


def test_unrolled_layers_stack_for_a_scanned_model_and_back():
    unrolled = _unrolled(3)
    scanned_target = {"visual/transformer/resblocks/ln_1/scale": (3, 4), "visual/proj": (4, 2)}
    scanned = param_layout.adapt(unrolled, scanned_target)
    assert set(scanned) == set(scanned_target)
    np.testing.assert_array_equal(scanned["visual/transformer/resblocks/ln_1/scale"][:, 0],
                                  [0, 1, 2])
    back = param_layout.adapt(scanned, {k: v.shape for k, v in unrolled.items()})
    assert set(back) == set(unrolled)
    for key, value in unrolled.items():
        np.testing.assert_array_equal(back[key], value)


def test_a_stack_with_a_gap_is_left_for_the_shape_check_to_name():
    source = _unrolled(3)
    del source["visual/transformer/resblocks_1/ln_1/scale"]
    out = param_layout.adapt(source, {"visual/transformer/resblocks/ln_1/scale": (3, 4)})
    assert "visual/transformer/resblocks/ln_1/scale" not in out


def test_the_video_temporal_embedding_inflates_but_not_the_temporal_transformers():
    source = {"visual/temporal_embedding": np.ones((4, 8), np.float32),
              "temporal/temporal_embedding": np.ones((4, 8), np.float32)}
    target = {"visual/temporal_embedding": (16, 8), "temporal/temporal_embedding": (16, 8)}
    out = param_layout.adapt(source, target)
    assert out["visual/temporal_embedding"].shape == (16, 8)
    assert out["temporal/temporal_embedding"].shape == (4, 8)  # a new module: a shape error
