"""EgoVLP's pretraining start: a timm ViT file and an HF DistilBERT folder convert into the
Frozen-in-Time that EgoVLP's own FrozenInTime.__init__ builds from them (pretrained=True,
time_init 'zeros'; generator tools/golden/make_egovlp_init_golden.py, files in
tests/data/golden/egovlp_init/): every value it takes from the files and the temporal
attention's zeros equal to 2e-5, the two random projections in shape. The result is a
converted checkpoint like an EgoVLP file's and loads into configs/egoclip_egovlp.py's model."""

import importlib.util
import json
import pathlib
import re

import jax
import numpy as np
import pytest

from tempret_jax import checkpoint, convert, state
from tempret_jax.models import egovlp_import, egovlp_init, retrieval
from tools import convert_checkpoint as cli

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden"
FILES = GOLDEN / "egovlp_init"
VIT, BERT = FILES / "vit_tiny.pth", FILES / "distilbert_tiny"
TOL = 2e-5
RANDOM = ("vid_proj.", "txt_proj.")  # FrozenInTime's freshly drawn projections
OUR_RANDOM = ("visual/proj", "visual/proj_bias", "text/text_projection", "text/proj_bias")
TINY = dict(vision_heads=4, num_frames=4, projection_dim=16)  # the golden model's


@pytest.fixture(scope="module")
def expected():
    """FrozenInTime.state_dict() right after EgoVLP's __init__ read the two files."""
    return dict(np.load(FILES / "expected.npz"))


def _max_difference(ours, theirs, skip):
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert np.shape(ours[k]) == np.shape(theirs[k]), k
    return max(float(np.abs(np.asarray(ours[k]) - theirs[k]).max())
               for k in ours if not k.startswith(skip))


def test_the_files_give_the_state_dict_egovlps_init_builds(expected):
    vit, bert = (convert.load_checkpoint(p).state_dict for p in (VIT, BERT))
    ours = egovlp_init.frozen_in_time(vit, bert, num_frames=4, projection_dim=16)
    assert _max_difference(ours, expected, RANDOM) <= TOL  # measured: 0.0


def test_the_conversion_equals_egovlps_init_converted_like_its_checkpoints(expected):
    params, config = convert.convert_egovlp_init(VIT, BERT, **TINY)
    theirs = egovlp_import.params_from_egovlp(expected, vision_heads=4, text_heads=4)
    assert _max_difference(checkpoint.flatten(params), checkpoint.flatten(theirs),
                           OUR_RANDOM) <= TOL
    _, their_config = convert.convert_state_dict(expected, fmt="egovlp", vision_heads=4,
                                                 text_heads=4)
    assert config.to_dict() == their_config.to_dict()
    assert config.text.heads == 4  # from distilbert_tiny/config.json's n_heads


def test_the_temporal_attention_starts_as_time_init_zeros():
    params, _ = convert.convert_egovlp_init(VIT, BERT, **TINY)
    v = params["visual"]
    np.testing.assert_array_equal(v["temporal_embedding"], np.zeros((4, 32)))
    for i in range(2):
        block = v[f"resblocks_{i}"]
        for name in "qkv":
            np.testing.assert_array_equal(block["time_attn"][name]["kernel"], 0)
            np.testing.assert_array_equal(block["time_attn"][name]["bias"], 0)
        np.testing.assert_array_equal(block["time_attn"]["out"]["kernel"], 1)  # proj filled 1
        np.testing.assert_array_equal(block["time_attn"]["out"]["bias"], 0)
        np.testing.assert_array_equal(block["ln_time"]["scale"], 1)
        np.testing.assert_array_equal(block["ln_time"]["bias"], 0)


def test_the_projections_are_torch_linear_draws_from_a_seed():
    rng = np.random.default_rng(0)
    weight, bias = egovlp_init.torch_linear_init(rng, 768, 256)
    bound = 768 ** -0.5
    assert weight.shape == (256, 768) and bias.shape == (256,)
    assert np.abs(weight).max() <= bound and np.abs(bias).max() <= bound
    assert abs(weight.std() / (bound / np.sqrt(3)) - 1) < 0.01  # uniform on +-bound
    a, b, c = (convert.convert_egovlp_init(VIT, BERT, **TINY, seed=s)[0] for s in (0, 0, 1))
    np.testing.assert_array_equal(a["visual"]["proj"], b["visual"]["proj"])
    assert not np.array_equal(a["visual"]["proj"], c["visual"]["proj"])


def test_the_command_writes_a_checkpoint_like_an_egovlp_files(tmp_path):
    out = tmp_path / "init"
    assert cli.main(["--egovlp_init", str(VIT), str(BERT), str(out), "--vision_heads", "4"]) == 0
    assert cli.main([str(GOLDEN / "egovlp" / "egovlp_tiny.pth"), str(tmp_path / "pt"),
                     "--vision_heads", "4", "--text_heads", "4"]) == 0
    ours, theirs = (convert.read_model_config(p) for p in (out, tmp_path / "pt"))
    assert (ours.embed_dim, theirs.embed_dim) == (256, 16)  # FrozenInTime's projection_dim
    assert ours.vision.num_frames == 16  # configs/pt/egoclip.json's num_frames
    theirs.embed_dim = 256
    theirs.vision.num_frames = 16
    assert ours.to_dict() == theirs.to_dict()
    saved, _ = state.load_params(None, out)
    their_saved, _ = state.load_params(None, tmp_path / "pt")
    assert checkpoint.flatten(saved).keys() == checkpoint.flatten(their_saved).keys()


def test_the_command_names_what_it_cannot_use(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--egovlp_init", str(VIT), str(BERT), str(VIT), str(tmp_path / "a")])
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "model.safetensors").write_bytes((BERT / "model.safetensors").read_bytes())
    config = json.loads((BERT / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps(dict(config, activation="relu")))
    assert cli.main(["--egovlp_init", str(VIT), str(bert), str(tmp_path / "b")]) == 1
    assert "config.json activation 'relu': expected 'gelu'" in capsys.readouterr().err
    import torch  # reading .pth files needs it in any case (torch_files)
    vit = torch.load(VIT, weights_only=True)
    vit["blocks.0.ls1.gamma"] = torch.ones(32)  # a layer-scale ViT: not EgoVLP's design
    torch.save(vit, tmp_path / "vit.pth")
    assert cli.main(["--egovlp_init", str(tmp_path / "vit.pth"), str(BERT), str(tmp_path / "c"),
                     "--vision_heads", "4"]) == 1
    assert "video_model.blocks.0.ls1.gamma" in capsys.readouterr().err


def _get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


def _recipe():
    path = pathlib.Path(__file__).parent.parent / "configs" / "egoclip_egovlp.py"
    spec = importlib.util.spec_from_file_location("egoclip_egovlp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


SIZES = {"embed_dim", "image_size", "patch_size", "width", "layers", "heads", "vocab_size",
         "context_length", "max_positions"}


def test_the_converted_init_loads_into_the_egoclip_egovlp_model_at_tiny_size(tmp_path):
    params, config = convert.convert_egovlp_init(VIT, BERT, **TINY)
    convert.save_converted(tmp_path / "init", params, config)
    c = _recipe()
    tiny = retrieval.model_config("egovlp_tiny")
    changed = [k for k in retrieval.ARCHITECTURE if _get(tiny, k) != _get(c.model, k)]
    assert all(k.split(".")[-1] in SIZES for k in changed), changed  # sizes only, same design
    convert.adopt_architecture(c.model, tmp_path / "init")
    c.update(global_batch_size=8, init_from=dict(c.init_from, path=str(tmp_path / "init")))
    c.data.resolution = c.model.vision.image_size
    setup = state.TrainSetup(c)
    loaded = setup.with_init_from(setup.init_state())
    got = checkpoint.flatten(jax.device_get(loaded.params))
    for key, value in checkpoint.flatten(params).items():
        if key.startswith(("visual/", "text/")):  # the recipe's init_from.include
            np.testing.assert_array_equal(_stacked(got, key), value, err_msg=key)


def _stacked(params, key):
    """params[key] of an unrolled key, from the layer stack when the model scans its layers."""
    m = re.fullmatch(r"(.*)/resblocks_(\d+)/(.*)", key)
    return params[f"{m[1]}/resblocks/{m[3]}"][int(m[2])] if m and key not in params else (
        params[key])


def test_the_released_sizes_build_the_egovlp_b16_model_of_the_recipe():
    """timm's ViT-B/16 and distilbert-base-uncased as laid out (shapes only: EgoVLP's full-size
    layout without what its __init__ adds) give the preset's architecture and EgoVLP's tree."""
    table = json.loads((GOLDEN / "egovlp" / "layout_b16.json").read_text())["state_dict"]
    zeros = {k.removeprefix("module."): np.broadcast_to(np.float32(0), s)
             for k, s in table.items()}
    vit = {k.removeprefix("video_model."): v for k, v in zeros.items()
           if k.startswith("video_model.") and not any(
               n in k for n in ("norm3", "timeattn", "temporal_embed"))}
    vit.update({"head.weight": np.zeros((1000, 768), np.float32),
                "head.bias": np.zeros(1000, np.float32)})
    bert = {"distilbert." + k.removeprefix("text_model."): v for k, v in zeros.items()
            if k.startswith("text_model.")}
    sd = egovlp_init.frozen_in_time(vit, bert)
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in zeros.items()}
    _, config = convert.convert_state_dict(sd, fmt="egovlp")
    recipe = _recipe().model
    for key in retrieval.ARCHITECTURE:
        assert _get(config, key) == pytest.approx(_get(recipe, key)), key
