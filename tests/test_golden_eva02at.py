"""EVA02-AT parity with its authors' code: a tiny video tower built with the EVA02-AT classes
(the SMS-Loss repository ships them only as CPython 3.12 bytecode; generator
tools/golden/make_eva02at_golden.py, files in tests/data/golden/eva02at/) saved as their
training script saves it, converted, gives their video embedding to 2e-5: joint space-time
attention with the learned spatial + temporal embeddings and the spatial-temporal RoPE
(spatial positions on the 16-patch pretraining grid), EVA02 blocks, linear patch embedding."""

import pathlib

import numpy as np
import pytest
import torch

from tempret_jax import convert, pretrained

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden"
HEADS = dict(vision_heads=2, text_heads=2)  # 32-wide heads: see test_golden_eva02_clip.py


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The EVA02-AT checkpoint with a text tower added in AVION's 'textual.' names (the golden
    model is a video tower alone): EVA-CLIP's tiny text tower, whose output dim (16) is the
    video head's."""
    ckpt = torch.load(GOLDEN / "eva02at" / "eva02at_tiny.pt", weights_only=True)
    eva_clip = torch.load(GOLDEN / "eva02_clip" / "eva02_clip_tiny.pt", weights_only=True)
    text = {f"module.textual.{k}": v for k, v in eva_clip.items() if not k.startswith("visual.")
            and k != "logit_scale"}
    ckpt["state_dict"].update(text, **{"module.logit_scale": eva_clip["logit_scale"]})
    path = tmp_path_factory.mktemp("eva02at") / "eva02at_with_text.pt"
    torch.save(ckpt, path)
    out = path.parent / "converted"
    params, config = convert.convert_checkpoint(path, **HEADS)
    convert.save_converted(out, params, config)
    return out


def test_the_format_and_architecture_are_read_from_the_file(converted):
    c = convert.read_model_config(converted)
    v = c.vision
    assert (v.num_frames, v.pos_embed, v.rope_grid, v.mlp, v.qkv_bias, v.ln_pre) == (
        4, "learned+rope", 16, "swiglu", "qv", False)
    assert (v.patch_bias, v.proj_bias, v.ln_eps, c.text.mlp) == (True, True, 1e-6, "gelu")


def test_video_embeddings_equal_the_authors(converted):
    reference = np.load(GOLDEN / "eva02at" / "reference.npz")
    video = pretrained.load(converted).encode_video(reference["video"])
    np.testing.assert_allclose(np.asarray(video), reference["video_embedding"], rtol=0,
                               atol=2e-5)


def test_text_embeddings_equal_eva_clips(converted):
    reference = np.load(GOLDEN / "eva02_clip" / "reference.npz")
    text = pretrained.load(converted).encode_text(reference["ids"])
    np.testing.assert_allclose(np.asarray(text), reference["text_embedding"], rtol=0, atol=2e-5)
