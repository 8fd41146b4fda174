"""EVA02-CLIP parity with EVA-CLIP's own code: tiny models built with its classes
(tools/golden/make_eva_clip_golden.py, files in tests/data/golden/eva02_clip/) convert with the
README's command and give its embeddings to 2e-5, in every layout its code saves."""

import json
import pathlib

import numpy as np
import pytest
import torch

from tempret_jax import convert, pretrained

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden" / "eva02_clip"
FILES = ("eva02_clip_tiny.pt",  # CLIP.state_dict(), float32
         "eva02_clip_tiny_custom_fp16.pt",  # CustomCLIP ('text.' keys), float16 as released
         "eva02_clip_train_tiny.pt")  # training/main.py: {'epoch', 'name', 'state_dict', ...}
# The tiny towers have 32-wide heads, which no file records; released EVA02-CLIP models have
# 64-wide ones, the converter's default rule (test_full_layouts.py).
HEADS = dict(vision_heads=2, text_heads=2)
TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def reference():
    return np.load(GOLDEN / "reference.npz")


@pytest.fixture(scope="module", params=FILES)
def converted(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("eva") / "converted"
    params, config = convert.convert_checkpoint(GOLDEN / request.param, num_frames=1, **HEADS)
    convert.save_converted(out, params, config)
    return out


def test_the_architecture_is_read_from_the_file(converted):
    v = convert.read_model_config(converted).vision
    info = json.loads((GOLDEN / "info.json").read_text())
    assert (v.mlp, v.sub_ln, v.ln_pre, v.qkv_bias, v.patch_bias, v.proj_bias) == (
        "swiglu", True, False, "qv", True, True)
    assert (v.ln_eps, v.pos_embed, v.rope_grid) == (1e-6, "learned+rope", 6)  # pt_hw_seq_len
    assert int(v.width * v.mlp_ratio) == 170 and info["upstream"]


def test_image_and_text_embeddings_equal_eva_clips(converted, reference):
    m = pretrained.load(converted)
    image = np.asarray(m.encode_video(reference["image"][:, None]))  # one frame: the image
    text = np.asarray(m.encode_text(reference["ids"]))
    np.testing.assert_allclose(image, reference["image_embedding"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(text, reference["text_embedding"], rtol=0, atol=TOLERANCE)


def test_the_rope_grid_comes_from_the_saved_table(reference, tmp_path):
    # The same weights with the RoPE table of pt_hw_seq_len = grid (4, the L/14 case): no
    # rescaling, and EVA-CLIP's embedding of that model.
    sd = torch.load(GOLDEN / FILES[0], weights_only=True)
    for name in ("cos", "sin"):
        sd[f"visual.rope.freqs_{name}"] = torch.from_numpy(reference[f"rope_freqs_{name}_pt4"])
    params, config = convert.convert_state_dict(sd, num_frames=1, **HEADS)
    assert config.vision.rope_grid == 4
    convert.save_converted(tmp_path / "pt4", params, config)
    image = pretrained.load(tmp_path / "pt4").encode_video(reference["image"][:, None])
    np.testing.assert_allclose(np.asarray(image), reference["image_embedding_pt4"], rtol=0,
                               atol=TOLERANCE)
