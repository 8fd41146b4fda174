"""The CLIP towers reproduce HF transformers' CLIPModel exactly (fp32), given converted weights."""

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp
from transformers import CLIPConfig, CLIPModel

from tempret_jax.models import hf_import, layers, text, video

EOT, SOT = 49407, 49406


def rel_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def hf_clip(vision: dict, text_cfg: dict, projection_dim: int, seed: int = 0) -> CLIPModel:
    """A randomly initialised HF CLIP, with non-trivial LayerNorm parameters."""
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text_cfg,
                                 projection_dim=projection_dim)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
    return model


def token_ids(lengths, context=77, seed=0) -> np.ndarray:
    """CLIP-style ids: <sot> random tokens <eot> then zero padding; (B, context) int32."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), context), np.int32)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, n - 1] = SOT, EOT
        ids[i, 1:n - 1] = rng.integers(1, SOT, n - 2)
    return ids


def hf_features(output) -> np.ndarray:
    """get_*_features returns a tensor (transformers 4) or a model output (transformers 5)."""
    return getattr(output, "pooler_output", output).detach().numpy()


TINY_VISION = dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2,
                   num_attention_heads=4, image_size=32, patch_size=8)
TINY_TEXT = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=49408, max_position_embeddings=77)


@pytest.fixture(scope="module")
def tiny_clip():
    model = hf_clip(TINY_VISION, TINY_TEXT, projection_dim=16)
    return model, model.state_dict()


def vision_tower(num_frames=1, frame_mode=False, **kw):
    return video.VisionTransformer(image_size=32, patch_size=8, width=48, layers=2, heads=4,
                                   output_dim=16, num_frames=num_frames, frame_mode=frame_mode,
                                   **kw)


def images(n, size=32, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_image_tower_equals_hf_clip(tiny_clip, scan_layers):
    model, sd = tiny_clip
    params = hf_import.params_from_hf_clip(sd, vision_heads=4, text_heads=4, num_frames=1,
                                           scan_layers=scan_layers)
    pixels = images(3)
    with torch.no_grad():
        ref = hf_features(model.get_image_features(pixel_values=torch.from_numpy(pixels)))
    # The video tower on clips of T = 1 frame is the image tower.
    out = vision_tower(stack=layers.StackSettings(scan=scan_layers)).apply(
        {"params": params["visual"]}, jnp.asarray(pixels.transpose(0, 2, 3, 1))[:, None])
    assert out["embedding"].shape == (3, 16)
    assert rel_error(out["embedding"], ref) <= 1e-5


@pytest.mark.parametrize("scan_layers", [False, True])
def test_text_tower_equals_hf_clip(tiny_clip, scan_layers):
    model, sd = tiny_clip
    params = hf_import.params_from_hf_clip(sd, vision_heads=4, text_heads=4,
                                           scan_layers=scan_layers)
    ids = token_ids([2, 9, 40, 77])
    with torch.no_grad():
        ref = hf_features(model.get_text_features(input_ids=torch.from_numpy(ids).long()))
    tower = text.TextTransformer(width=32, layers=2, heads=4, output_dim=16,
                                 stack=layers.StackSettings(scan=scan_layers))
    pooled, tokens = tower.apply({"params": params["text"]}, jnp.asarray(ids))
    assert pooled.shape == (4, 16) and tokens.shape == (4, 77, 32)
    assert rel_error(pooled, ref) <= 1e-5


def test_text_tower_ignores_padding_after_end_of_text(tiny_clip):
    _, sd = tiny_clip
    params = hf_import.params_from_hf_clip(sd, vision_heads=4, text_heads=4)
    tower = text.TextTransformer(width=32, layers=2, heads=4, output_dim=16)
    ids = token_ids([6])
    garbage = ids.copy()
    garbage[0, 6:] = 123  # anything after <eot> is invisible to it (causal mask)
    a, _ = tower.apply({"params": params["text"]}, jnp.asarray(ids))
    b, _ = tower.apply({"params": params["text"]}, jnp.asarray(garbage))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(text.text_padding_mask(jnp.asarray(ids))[0],
                                  np.arange(77) < 6)


def test_frame_mode_is_the_image_tower_on_every_frame(tiny_clip):
    model, sd = tiny_clip
    params = hf_import.params_from_hf_clip(sd, vision_heads=4, text_heads=4, num_frames=None)
    clips = images(2 * 3).reshape(2, 3, 3, 32, 32)                      # (B, T, C, H, W)
    with torch.no_grad():
        ref = hf_features(model.get_image_features(
            pixel_values=torch.from_numpy(clips.reshape(6, 3, 32, 32))))
    out = vision_tower(num_frames=3, frame_mode=True).apply(
        {"params": params["visual"]}, jnp.asarray(clips.transpose(0, 1, 3, 4, 2)))
    assert out["embedding"].shape == (2, 3, 16)
    assert out["frame_tokens"].shape == (2, 3, 48)
    assert out["patch_tokens"].shape == (2, 3 * 16, 48)
    assert rel_error(out["embedding"].reshape(6, 16), ref) <= 1e-5


def test_zero_temporal_embedding_makes_joint_video_tower_frame_order_invariant(tiny_clip):
    # With the checkpoint's zero temporal embedding and no RoPE, joint attention is a set
    # operation over frames: a CLIP image checkpoint starts frame-order agnostic.
    _, sd = tiny_clip
    params = hf_import.params_from_hf_clip(sd, vision_heads=4, text_heads=4, num_frames=4)
    clip = jnp.asarray(images(4).transpose(0, 2, 3, 1))[None]
    tower = vision_tower(num_frames=4)
    a = tower.apply({"params": params["visual"]}, clip)["embedding"]
    b = tower.apply({"params": params["visual"]}, clip[:, ::-1])["embedding"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def openai_state_dict(sd) -> dict:
    """The same weights under OpenAI CLIP's names (fused in_proj, (in, out) projections)."""
    out = {"logit_scale": sd["logit_scale"]}

    def blocks(src, dst):
        i = 0
        while f"{src}{i}.layer_norm1.weight" in sd:
            s, d = f"{src}{i}.", f"{dst}{i}."
            a = s + "self_attn."
            out[d + "attn.in_proj_weight"] = torch.cat([sd[a + f"{n}_proj.weight"] for n in "qkv"])
            out[d + "attn.in_proj_bias"] = torch.cat([sd[a + f"{n}_proj.bias"] for n in "qkv"])
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                                 ("mlp.c_proj", "mlp.fc2")):
                for leaf in ("weight", "bias"):
                    out[f"{d}{ours}.{leaf}"] = sd[f"{s}{theirs}.{leaf}"]
            i += 1

    v, t = "vision_model.", "text_model."
    out["visual.conv1.weight"] = sd[v + "embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd[v + "embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[v + "embeddings.position_embedding.weight"]
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for leaf in ("weight", "bias"):
            out[f"visual.{ours}.{leaf}"] = sd[f"{v}{theirs}.{leaf}"]
    out["visual.proj"] = sd["visual_projection.weight"].T
    blocks(v + "encoder.layers.", "visual.transformer.resblocks.")
    out["token_embedding.weight"] = sd[t + "embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[t + "embeddings.position_embedding.weight"]
    for leaf in ("weight", "bias"):
        out[f"ln_final.{leaf}"] = sd[f"{t}final_layer_norm.{leaf}"]
    out["text_projection"] = sd["text_projection.weight"].T
    blocks(t + "encoder.layers.", "transformer.resblocks.")
    return out


def test_openai_and_hf_state_dicts_convert_to_the_same_params(tiny_clip):
    _, sd = tiny_clip
    from_hf = hf_import.params_from_hf_clip(sd, vision_heads=4, text_heads=4, num_frames=2)
    prefixed = {"module." + k: v for k, v in openai_state_dict(sd).items()}
    from_openai = hf_import.params_from_openai_clip(
        prefixed, vision_heads=4, text_heads=4, num_frames=2,
        key_map=lambda k: k.removeprefix("module."))
    assert jax.tree.structure(from_hf) == jax.tree.structure(from_openai)
    jax.tree.map(np.testing.assert_array_equal, from_hf, from_openai)


def test_converted_params_match_init_tree(tiny_clip):
    _, sd = tiny_clip
    params = hf_import.params_from_hf_clip(sd, vision_heads=4, text_heads=4, num_frames=2)
    init = jax.eval_shape(vision_tower(num_frames=2).init, jax.random.key(0),
                          jnp.zeros((1, 2, 32, 32, 3)))
    shapes = lambda tree: jax.tree.map(np.shape, tree)
    assert shapes(init["params"]) == shapes(params["visual"])


def test_missing_key_names_the_key():
    with pytest.raises(KeyError, match="vision_model.embeddings.patch_embedding.weight"):
        hf_import.params_from_hf_clip({}, vision_heads=4, text_heads=4)


@pytest.mark.slow
def test_vit_b16_towers_equal_hf_clip():
    model = hf_clip(dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, image_size=224, patch_size=16),
                    dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, vocab_size=49408, max_position_embeddings=77),
                    projection_dim=512)
    params = hf_import.params_from_hf_clip(model.state_dict(), vision_heads=12, text_heads=8,
                                           num_frames=1)
    pixels = images(2, size=224)
    ids = token_ids([5, 77])
    with torch.no_grad():
        ref_img = hf_features(model.get_image_features(pixel_values=torch.from_numpy(pixels)))
        ref_txt = hf_features(model.get_text_features(input_ids=torch.from_numpy(ids).long()))
    vit = video.VisionTransformer(num_frames=1)  # defaults are ViT-B/16
    img = vit.apply({"params": params["visual"]},
                    jnp.asarray(pixels.transpose(0, 2, 3, 1))[:, None])
    txt, _ = text.TextTransformer().apply({"params": params["text"]}, jnp.asarray(ids))
    assert rel_error(img["embedding"], ref_img) <= 1e-5
    assert rel_error(txt, ref_txt) <= 1e-5
