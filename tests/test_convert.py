"""Checkpoint import: every source format converts to the params of `hf_import.params_from_hf_clip`,
the converted checkpoint round-trips through orbax with its model config, and bad state dicts
fail with messages that name the key and the shapes."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tempret_jax import convert, formats, state
from tempret_jax.models import hf_import
from tempret_jax.models.retrieval import RetrievalModel
from test_models_towers import (TINY_TEXT, TINY_VISION, hf_clip, hf_features, openai_state_dict,
                                token_ids)

FRAMES = 2
HEADS = dict(vision_heads=4, text_heads=4)


@pytest.fixture(scope="module")
def clip():
    """(HF model, its state dict, the reference params)."""
    model = hf_clip(TINY_VISION, TINY_TEXT, projection_dim=16)
    sd = model.state_dict()
    return model, sd, hf_import.params_from_hf_clip(sd, **HEADS, num_frames=FRAMES)


def avion_checkpoint(openai_sd, temporal) -> dict:
    """An AVION training checkpoint of the same weights: DDP prefix, nested state dict, text
    tower under 'textual.', flash-attn names and the linear patch embedding in the visual tower,
    a trained temporal embedding."""
    sd = {}
    for key, value in openai_sd.items():
        if key.startswith("visual."):
            key = (key.replace("visual.proj", "visual.image_projection")
                   .replace("attn.in_proj_", "attn.Wqkv.")
                   .replace("mlp.c_fc.", "mlp.fc1.").replace("mlp.c_proj.", "mlp.fc2."))
            if key == "visual.conv1.weight":
                value = value.flatten(1)
        elif key != "logit_scale":
            key = "textual." + key
        sd["module." + key] = value
    sd["module.visual.temporal_embedding"] = temporal
    return {"state_dict": sd, "epoch": 3}


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_hf_folder_converts_to_hf_import_params(clip, tmp_path):
    model, _, expected = clip
    model.save_pretrained(tmp_path / "hf")
    # config.json supplies the head counts and the activation.
    params, config = convert.convert_checkpoint(tmp_path / "hf", num_frames=FRAMES)
    assert_trees_equal(params, expected)
    assert (config.vision.width, config.vision.layers, config.vision.heads) == (48, 2, 4)
    assert (config.vision.image_size, config.vision.patch_size) == (32, 8)
    assert (config.text.width, config.text.layers, config.text.heads) == (32, 2, 4)
    assert (config.embed_dim, config.vision.num_frames, config.vision.mlp) == (16, 2, "quick_gelu")


def test_pytorch_bin_converts_to_hf_import_params(clip, tmp_path):
    _, sd, expected = clip
    torch.save(sd, tmp_path / "pytorch_model.bin")
    params, _ = convert.convert_checkpoint(tmp_path / "pytorch_model.bin", **HEADS,
                                           num_frames=FRAMES)
    assert_trees_equal(params, expected)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_openai_state_dict_converts_to_hf_import_params(clip, tmp_path, suffix):
    _, sd, expected = clip
    openai_sd = {k: v.contiguous() for k, v in openai_state_dict(sd).items()}
    openai_sd["input_resolution"] = torch.tensor(32)  # metadata of OpenAI's archives: ignored
    path = tmp_path / f"clip{suffix}"
    torch.save(openai_sd, path) if suffix == ".pt" else save_file(openai_sd, path)
    params, config = convert.convert_checkpoint(path, **HEADS, num_frames=FRAMES)
    assert formats.detect_format(openai_sd) == "openai"
    assert_trees_equal(params, expected)
    assert config.vision.mlp == "quick_gelu"


def test_avion_checkpoint_converts_with_its_temporal_embedding(clip, tmp_path):
    _, sd, expected = clip
    temporal = torch.randn(FRAMES + 2, 48)
    torch.save(avion_checkpoint(openai_state_dict(sd), temporal), tmp_path / "avion.pt")
    params, config = convert.convert_checkpoint(tmp_path / "avion.pt", **HEADS)
    np.testing.assert_array_equal(params["visual"].pop("temporal_embedding"), temporal.numpy())
    expected = jax.tree.map(lambda x: x, expected)
    del expected["visual"]["temporal_embedding"]
    assert_trees_equal(params, expected)
    # The checkpoint's embedding sets the frame count; AVION's towers use exact GELU and its
    # vision tower LayerNorm eps 1e-6.
    assert (config.vision.num_frames, config.vision.mlp, config.text.mlp) == (4, "gelu", "gelu")
    assert (config.vision.ln_eps, config.text.ln_eps) == (1e-6, 1e-5)


def test_saved_args_are_read_and_checked(clip, tmp_path):
    import argparse
    _, sd, _ = clip
    ckpt = avion_checkpoint(openai_state_dict(sd), torch.zeros(FRAMES, 48))
    ckpt["args"] = argparse.Namespace(model="CLIP_VITB16", use_bidirectional_lm=True)
    torch.save(ckpt, tmp_path / "bidirectional.pt")
    with pytest.raises(convert.ConversionError, match="bidirectional.pt: args.use_bidirect"):
        convert.convert_checkpoint(tmp_path / "bidirectional.pt", **HEADS)
    ckpt["args"] = argparse.Namespace(model="TIMESFORMER_BASE")
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(convert.ConversionError, match="args.model 'TIMESFORMER_BASE'"):
        convert.convert_checkpoint(tmp_path / "other.pt", **HEADS)


def test_a_converted_checkpoint_loads_into_a_scanned_model(clip, tmp_path):
    _, sd, _ = clip
    params, config = convert.convert_state_dict(sd, **HEADS, num_frames=FRAMES)
    convert.save_converted(tmp_path / "out", params, config)
    config.scan_layers = True
    model = RetrievalModel.from_config(config)
    video = jnp.zeros((1, FRAMES, 32, 32, 3))
    target = jax.eval_shape(model.init, jax.random.key(0), video, jnp.zeros((1, 77), jnp.int32))
    loaded, _ = state.load_params(target["params"], tmp_path / "out")
    expected = hf_import.params_from_hf_clip(sd, **HEADS, num_frames=FRAMES, scan_layers=True)
    assert_trees_equal(loaded, expected)


def test_saved_checkpoint_round_trips_and_runs(clip, tmp_path):
    """save_converted, then state.load_params and read_model_config give the params and config
    back (the loader every run uses reads the same folder); the model built from the config
    computes HF's text features."""
    model, sd, expected = clip
    params, config = convert.convert_state_dict(sd, **HEADS, num_frames=FRAMES)
    convert.save_converted(tmp_path / "out", params, config)
    loaded, step = state.load_params(None, tmp_path / "out")
    loaded_config = convert.read_model_config(tmp_path / "out")
    assert_trees_equal(loaded, expected)
    assert step == -1
    assert loaded_config.to_dict() == config.to_dict()

    ids = token_ids([5, 9])
    encode = functools.partial(RetrievalModel.from_config(loaded_config).apply,
                               method=RetrievalModel.encode_text)
    ours = jax.jit(encode)({"params": loaded}, jnp.asarray(ids))["features"]
    with torch.no_grad():
        ref = hf_features(model.get_text_features(input_ids=torch.from_numpy(ids).long()))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_save_refuses_an_existing_folder(clip, tmp_path):
    _, sd, _ = clip
    params, config = convert.convert_state_dict(sd, **HEADS, num_frames=FRAMES)
    (tmp_path / "out").mkdir()
    with pytest.raises(convert.ConversionError, match="exists"):
        convert.save_converted(tmp_path / "out", params, config)


def without(sd, key):
    return {k: v for k, v in sd.items() if k != key}


def test_truncated_state_dict_names_the_missing_key(clip):
    _, sd, _ = clip
    key = "text_model.encoder.layers.1.mlp.fc2.bias"
    with pytest.raises(convert.ConversionError, match=re.escape(f"missing key {key!r}")):
        convert.convert_state_dict(without(sd, key), **HEADS)


def test_layer_with_another_shape_names_both_shapes(clip):
    _, sd, _ = clip
    key = "vision_model.encoder.layers.1.mlp.fc1.weight"
    bad = {**sd, key: torch.zeros(100, 48)}
    with pytest.raises(convert.ConversionError, match=re.escape(
            f"{key}: (100, 48), but vision_model.encoder.layers.0.mlp.fc1.weight: (192, 48)")):
        convert.convert_state_dict(bad, **HEADS)


def test_shape_mismatch_with_the_model_names_the_parameter_and_both_shapes(clip):
    _, sd, _ = clip
    bad = {**sd, "vision_model.post_layernorm.bias": torch.zeros(47)}
    with pytest.raises(convert.ConversionError, match=re.escape(
            "visual/ln_post/bias: checkpoint (47,), model (48,)")):
        convert.convert_state_dict(bad, **HEADS)


def test_unknown_keys_are_named(clip):
    _, sd, _ = clip
    bad = {**sd, "vision_model.head.weight": torch.zeros(3, 48)}
    with pytest.raises(convert.ConversionError, match="unknown key.*vision_model.head.weight"):
        convert.convert_state_dict(bad, **HEADS)


def test_timesformer_video_tower_is_refused(clip):
    _, sd, _ = clip
    ckpt = avion_checkpoint(openai_state_dict(sd), torch.zeros(FRAMES, 48))["state_dict"]
    ckpt["module.visual.blocks.0.timeattn.qkv.weight"] = torch.zeros(144, 48)
    with pytest.raises(convert.ConversionError, match="TimeSformer"):
        convert.convert_state_dict(ckpt, **HEADS)


def test_heads_must_divide_the_width(clip):
    _, sd, _ = clip
    with pytest.raises(convert.ConversionError, match="vision_heads=5 does not divide .* 48"):
        convert.convert_state_dict(sd, vision_heads=5, text_heads=4)


def test_cli_writes_the_checkpoint_and_reports_errors(clip, tmp_path, capsys):
    from tools import convert_checkpoint as cli

    model, sd, expected = clip
    model.save_pretrained(tmp_path / "hf")
    assert cli.main([str(tmp_path / "hf"), str(tmp_path / "out"), "--num_frames", "2"]) == 0
    params, _ = state.load_params(None, tmp_path / "out")
    assert convert.read_model_config(tmp_path / "out").vision.num_frames == 2
    assert_trees_equal(params, expected)
    torch.save(without(sd, "logit_scale"), tmp_path / "bad.bin")
    assert cli.main([str(tmp_path / "bad.bin"), str(tmp_path / "out2"), "--vision_heads", "4",
                     "--text_heads", "4"]) == 1
    assert "missing key 'logit_scale'" in capsys.readouterr().err


def _truncated(sd, path):
    torch.save(sd, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_a_checkpoint(sd, path):
    path.write_text("epoch,loss\n1,0.5\n")


def _a_list(sd, path):
    torch.save([torch.zeros(2)], path)


def _not_tensors(sd, path):
    torch.save({"state_dict": {"visual.proj": [1.0, 2.0]}}, path)


@pytest.mark.parametrize("write, expected", [
    (_truncated, r"bad\.pt: not a readable \.pt checkpoint \(truncated or another format"),
    (_not_a_checkpoint, r"bad\.pt: not a readable \.pt checkpoint"),
    (_a_list, r"bad\.pt: expected a state dict \(a mapping of names to tensors\), got list"),
    (_not_tensors, r"bad\.pt: expected a state dict of tensors; 'visual.proj' is a list"),
])
def test_unreadable_files_are_one_line_naming_the_file(clip, tmp_path, capsys, write, expected):
    from tools import convert_checkpoint as cli

    write(clip[1], tmp_path / "bad.pt")
    assert cli.main([str(tmp_path / "bad.pt"), str(tmp_path / "out"), "--vision_heads", "4",
                     "--text_heads", "4"]) == 1
    err = capsys.readouterr().err
    assert re.search(expected, err) and err.count("\n") == 1, err
