"""AVION parity with AVION's own code: tiny models built with its classes
(tools/golden/make_avion_golden.py, files in tests/data/golden/avion/), saved as its pretraining
and EK-100 MIR fine-tuning scripts save them (argparse args, optimizer, scaler, numpy scalars,
'module.' keys; also the flash-attention + fast-conv1 layout AVION trains with), convert with
the README's command and give AVION's embeddings to 2e-5; a 4-frame pretrained model inflated
to 16 frames on load gives what AVION's fine-tuning script computes after its own inflation."""

import pathlib

import numpy as np
import pytest

from tempret_jax import convert, pretrained

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden" / "avion"
# The tiny towers have 32- and 16-wide heads, which no file records (their saved args name
# CLIP_VITB16, whose 12 / 8 heads the released sizes have: test_full_layouts.py).
HEADS = dict(vision_heads=2, text_heads=2)
TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def reference():
    return np.load(GOLDEN / "reference.npz")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{file stem: converted folder} of the three AVION checkpoints."""
    root = tmp_path_factory.mktemp("avion")
    out = {}
    for name in ("avion_pretrain_tiny", "avion_finetune_tiny", "avion_finetune_flash_tiny"):
        params, config = convert.convert_checkpoint(GOLDEN / f"{name}.pt", **HEADS)
        convert.save_converted(root / name, params, config)
        out[name] = root / name
    return out


def test_the_architecture_is_avions(converted):
    for name, frames in (("avion_pretrain_tiny", 4), ("avion_finetune_tiny", 16)):
        c = convert.read_model_config(converted[name])
        assert (c.embed_dim, c.vision.num_frames) == (16, frames)
        assert (c.vision.mlp, c.text.mlp, c.vision.ln_eps, c.text.ln_eps) == (
            "gelu", "gelu", 1e-6, 1e-5)
        assert (c.vision.ln_pre, c.vision.patch_bias, c.vision.proj_bias) == (True, False, False)


@pytest.mark.parametrize("name, video", [("avion_pretrain_tiny", "video4"),
                                         ("avion_finetune_tiny", "video16"),
                                         ("avion_finetune_flash_tiny", "video16")])
def test_embeddings_equal_avions(converted, reference, name, video):
    m = pretrained.load(converted[name])
    stage = "pretrain" if "pretrain" in name else "finetune"
    np.testing.assert_allclose(np.asarray(m.encode_video(reference[video])),
                               reference[f"{stage}_video"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(np.asarray(m.encode_text(reference["ids"])),
                               reference[f"{stage}_text"], rtol=0, atol=TOLERANCE)


def test_a_pretrained_model_inflates_to_sixteen_frames_as_avion_does(converted, reference):
    m = pretrained.load(converted["avion_pretrain_tiny"], num_frames=16)
    np.testing.assert_allclose(np.asarray(m.encode_video(reference["video16"])),
                               reference["inflated_video"], rtol=0, atol=TOLERANCE)


def test_without_head_counts_the_tiny_file_says_where_its_heads_came_from():
    # Its args name CLIP_VITB16 (12 vision heads), which no 64-wide tower can have.
    with pytest.raises(convert.ConversionError, match=r"vision_heads=12 \(from args.model "
                       r"'CLIP_VITB16'\) does not divide the tower width 64; pass --vision_heads"):
        convert.convert_checkpoint(GOLDEN / "avion_pretrain_tiny.pt")
