"""The released sizes convert without architecture flags: the full ViT-B/16 and ViT-L/14 state
dicts of each family, as the authors' classes lay them out (key -> shape tables written by
tools/golden/make_*_golden.py --layouts from models built on torch's meta device), convert from
shapes alone (zero-stride arrays: no weights, no memory) into the model each config starts
from."""

import json
import pathlib

import numpy as np
import pytest

from tempret_jax import checkpoint, convert
from tempret_jax.models import retrieval

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden"


def _state_dict(family, size):
    table = json.loads((GOLDEN / family / f"layout_{size}.json").read_text())["state_dict"]
    # Buffers hold values, not shapes: the RoPE tables are left out (the grid then defaults
    # to EVA02-CLIP's 16, which test_golden_eva02_clip.py reads back from real tables).
    return {k: np.broadcast_to(np.float32(0), shape) for k, shape in table.items()
            if "rope.freqs" not in k}


def _eva02at(size):
    """EVA02-AT's video tower with AVION's text tower of the same size (its code has none)."""
    sd = _state_dict("eva02at", size)
    sd.update({k: v for k, v in _state_dict("avion", size).items()
               if k.startswith(("module.textual.", "module.logit_scale"))})
    return sd


CASES = [("avion", "b16", "avion_b16", 149_305_345), ("avion", "l14", "avion_l14", 426_715_393),
         ("avion", "b16_flash", "avion_b16", 149_305_345),
         ("avion", "l14_flash", "avion_l14", 426_715_393),
         ("eva02_clip", "b16", "eva02_b16", 149_691_137),
         ("eva02_clip", "l14", "eva02_l14", 427_755_457),
         ("eva02at", "b16", "eva02_b16", None), ("eva02at", "l14", "eva02_l14", None),
         ("egovlp", "b16", "egovlp_b16", 180_934_400)]


@pytest.mark.parametrize("family, size, preset, count", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_released_layout_converts_to_its_presets_architecture(family, size, preset, count):
    sd = _eva02at(size[:3]) if family == "eva02at" else _state_dict(family, size)
    params, config = convert.convert_state_dict(sd)
    expected = retrieval.model_config(preset)
    if family not in ("eva02_clip", "egovlp"):
        expected.embed_dim = 256  # AVION's LaViLa pretraining, EVA02-AT's paper
    for key in retrieval.ARCHITECTURE:
        got, want = config, expected
        for part in key.split("."):
            got, want = got[part], want[part]
        if key.endswith("mlp_ratio"):
            width = (config.vision if key.startswith("vision") else config.text).width
            got, want = int(width * got), int(width * want)
        assert got == want, key
    assert config.vision.num_frames == 16
    n = sum(int(np.prod(x.shape)) for x in checkpoint.flatten(params).values())
    if count is not None:  # what the authors' model holds (temporal embedding included)
        # EVA02-CLIP has no temporal embedding, EgoVLP no logit scale (its 0.05 is fixed).
        assert n == count + {"eva02_clip": 16 * config.vision.width, "egovlp": 1}.get(family, 0)
