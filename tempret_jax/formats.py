"""The published checkpoint formats: telling them apart by their key names and renaming each to
the two layouts `models.hf_import` converts (OpenAI CLIP's and EVA-CLIP's).

Formats (`tempret_jax.convert` documents what each file holds): 'hf', 'openai', 'avion'
(AVION / LaViLa, renamed to OpenAI's), 'eva_clip', 'eva02at' (timm Eva names, renamed to
EVA-CLIP's), 'egovlp' (EgoVLP's Frozen-in-Time, read by `models.egovlp_import`).
`FAMILY_SETTINGS` holds what a family's code fixes that its shapes cannot show.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from tempret_jax.models import egovlp_import
from tempret_jax.models import hf_import

FORMATS = ("hf", "openai", "avion", "eva_clip", "eva02at", "egovlp")
# Buffers and metadata that carry no parameters.
IGNORED = re.compile(r"(^|\.)(position_ids|attn_mask)$|^(input_resolution|context_length|"
                      r"vocab_size)$|(^|\.)rope\.freqs_(cos|sin)$")
# What the file's family fixes that shapes cannot show: (vision, text) tower settings.
FAMILY_SETTINGS = {
    "clip": ({"mlp": "quick_gelu", "ln_eps": 1e-5}, {"mlp": "quick_gelu", "ln_eps": 1e-5}),
    # avion/models/transformer.py: VisionTransformer norm_layer partial(nn.LayerNorm, eps=1e-6),
    # act_layer nn.GELU in both towers (also when it loads OpenAI's QuickGELU weights).
    "avion": ({"mlp": "gelu", "ln_eps": 1e-6}, {"mlp": "gelu", "ln_eps": 1e-5}),
    # eva_clip/model.py _build_vision_tower: partial(LayerNorm, eps=1e-6), qkv_bias (q, v);
    # _build_text_tower: nn.GELU (quick_gelu False in the EVA02 configs), LayerNorm eps 1e-5.
    "eva_clip": ({"mlp": "swiglu", "ln_eps": 1e-6, "qkv_bias": "qv", "proj_bias": True,
                  "pos_embed": "learned+rope"}, {"mlp": "gelu", "ln_eps": 1e-5}),
}
EVA_RoPE_GRID = 16  # EVA02-CLIP model_configs/*.json pt_hw_seq_len (B/16 and L/14 alike)
# AVION's model builders (avion/models/model_clip.py) and their head counts (vision, text).
AVION_MODELS = {"CLIP_VITB16": (12, 8), "CLIP_VITL14": (16, 12), "CLIP_VITL14_336PX": (16, 12)}
_EVA02AT_RENAMES = (  # timm Eva names (EVA02-AT) -> EVA-CLIP's
    (r"^textual\.", ""),
    (r"^visual\.conv1\.", "visual.patch_embed.proj."),
    (r"^visual\.temporal_embed$", "visual.temporal_embedding"),
    (r"\.attn\.([qv])_proj\.bias$", r".attn.\1_bias"),
    (r"\.attn\.norm\.", ".attn.inner_attn_ln."),
    (r"\.mlp\.fc1_g\.", ".mlp.w1."),
    (r"\.mlp\.fc1_x\.", ".mlp.w2."),
    (r"\.mlp\.norm\.", ".mlp.ffn_ln."),
    (r"\.mlp\.fc2\.", ".mlp.w3."),
)
_AVION_RENAMES = (  # (pattern, replacement) applied in order
    (r"^textual\.", ""),
    (r"^visual\.image_projection$", "visual.proj"),
    (r"^image_projection$", "visual.proj"),
    (r"\.attn\.Wqkv\.", ".attn.in_proj_"),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)


class ConversionError(ValueError):
    """The source weights cannot be converted (unknown/missing keys, shape mismatches)."""


def detect_format(state_dict: Mapping[str, Any]) -> str:
    """One of FORMATS from the key names, after any 'module.' prefix."""
    keys = [k.removeprefix("module.") for k in state_dict]
    if egovlp_import.is_egovlp(keys):
        return "egovlp"
    if any(k.startswith("vision_model.") for k in keys):
        return "hf"
    if any(".mlp.fc1_g." in k or k == "visual.temporal_embed" for k in keys):
        return "eva02at"
    if any(k.startswith(("textual.", "image_projection", "visual.image_projection"))
           or ".attn.Wqkv." in k or ".timeattn." in k for k in keys):
        return "avion"  # also LaViLa's TimeSformer ('timeattn'), which avion_to_openai refuses
    if any(k.startswith(("visual.blocks.", "visual.patch_embed.")) for k in keys):
        return "eva_clip"
    if any(k.startswith("visual.") for k in keys):
        return "openai"
    raise ConversionError(f"cannot tell the checkpoint format from its keys (first: "
                          f"{keys[:5]}); expected HF CLIPModel, OpenAI CLIP, AVION/LaViLa, "
                          f"EVA-CLIP, EVA02-AT or EgoVLP names")


def _unflatten_patches(conv, key: str):
    """A linear patch embedding (D, 3 * p * p) over (c, ph, pw) patches -> (D, 3, p, p)."""
    p = int(round((conv.shape[1] / 3) ** 0.5))
    if 3 * p * p != conv.shape[1]:
        raise ConversionError(f"{key}: a linear patch embedding needs 3 * p * p inputs, got "
                              f"shape {tuple(conv.shape)}")
    return conv.reshape(conv.shape[0], 3, p, p)


def eva02at_to_eva_clip(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """EVA02-AT names (timm Eva, see the module docstring) -> EVA-CLIP's."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in _EVA02AT_RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    conv = out.get("visual.patch_embed.proj.weight")
    if conv is not None and conv.ndim == 2:
        out["visual.patch_embed.proj.weight"] = _unflatten_patches(conv, "visual.conv1.weight")
    return out


def avion_to_openai(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """AVION / LaViLa names and layouts -> OpenAI CLIP's (see the module docstring)."""
    if any(".timeattn." in k for k in state_dict):
        raise ConversionError(
            "the video tower is a TimeSformer (divided space-time attention: 'timeattn' keys, "
            "LaViLa's SpaceTimeTransformer); only AVION's joint-attention ViT converts")
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in _AVION_RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    conv = out.get("visual.conv1.weight")
    if conv is not None and conv.ndim == 2:  # fast conv1: Linear over (c, ph, pw) patches
        out["visual.conv1.weight"] = _unflatten_patches(conv, "visual.conv1.weight")
    return out


def canonical(state_dict: Mapping[str, Any], fmt: str = "auto"
              ) -> tuple[dict[str, Any], str, str, int | None]:
    """A state dict in a format `models.hf_import` reads.

    Returns (renamed state dict, its layout 'hf' | 'openai' | 'eva_clip' | 'egovlp' (read
    by `models.egovlp_import`), the family of `FAMILY_SETTINGS` ('egovlp': its own), the RoPE
    grid of an EVA02 file (None for the others)).
    """
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}  # DDP
    fmt = detect_format(state_dict) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ConversionError(f"format: expected one of {FORMATS} or 'auto', got {fmt!r}")
    family = {"avion": "avion", "eva_clip": "eva_clip", "eva02at": "eva_clip",
              "egovlp": "egovlp"}.get(fmt, "clip")
    if fmt == "avion":
        state_dict, fmt = avion_to_openai(state_dict), "openai"
    if fmt == "eva02at":
        state_dict, fmt = eva02at_to_eva_clip(state_dict), "eva_clip"
    rope_grid = None
    if fmt == "eva_clip":
        # CustomCLIP (EVA-CLIP's force_custom_clip) keeps the text tower under 'text.'.
        state_dict = {k.removeprefix("text."): v for k, v in state_dict.items()}
        rope_grid = eva_rope_grid(state_dict)
    return state_dict, fmt, family, rope_grid


def eva_rope_grid(state_dict: Mapping[str, Any]) -> int:
    """EVA-CLIP's pt_hw_seq_len, read back from the saved RoPE table when there is one.

    visual.rope.freqs_cos / freqs_sin (grid^2, K): row 1 is the patch at (row 0, column 1),
    whose first column-half pair (index K / 2) turned by position (1 / grid) * pt at
    frequency 1, so pt = grid * angle. Without the buffers: EVA02-CLIP's 16.
    """
    cos, sin = (state_dict.get(f"visual.rope.freqs_{n}") for n in ("cos", "sin"))
    if cos is None or sin is None:
        return EVA_RoPE_GRID
    cos, sin = (np.asarray(hf_import.to_numpy(x), np.float64) for x in (cos, sin))
    grid = int(round(cos.shape[0] ** 0.5))
    angle = math.atan2(sin[1, cos.shape[1] // 2], cos[1, cos.shape[1] // 2])
    return int(round(grid * angle))


def _check_args(args: Mapping[str, Any], heads: dict[str, Optional[int]]) -> dict[str, int]:
    """AVION's saved args: a known model builder (its head counts) and a causal text tower."""
    if not args:
        return {}
    if args.get("use_bidirectional_lm"):
        raise ConversionError("args.use_bidirectional_lm is True: the text tower was trained "
                              "without its causal mask, which this model always applies")
    model = args.get("model")
    if model is None:
        return {}
    if model not in AVION_MODELS:
        raise ConversionError(f"args.model {model!r}: expected one of AVION's joint-attention "
                              f"CLIP models {sorted(AVION_MODELS)}")
    vision, text = AVION_MODELS[model]
    return {"vision_heads": heads["vision_heads"] or vision,
            "text_heads": heads["text_heads"] or text}


def head_counts(widths: tuple[int, int], vision_heads: Optional[int],
                text_heads: Optional[int], args: Mapping[str, Any]) -> dict[str, int]:
    """The towers' head counts: given, else the saved args' model (AVION), else width // 64
    (every released CLIP, EVA02, EgoVLP ViT-B/16 and DistilBERT); each must divide its width."""
    v_width, t_width = widths
    explicit = dict(vision_heads=vision_heads, text_heads=text_heads)
    heads = dict(explicit, **_check_args(args, explicit))
    heads = dict(vision_heads=heads["vision_heads"] or max(v_width // 64, 1),
                 text_heads=heads["text_heads"] or max(t_width // 64, 1))
    for name, count in heads.items():
        width = v_width if name.startswith("vision") else t_width
        if width % count:
            if explicit[name] is not None:
                raise ConversionError(f"{name}={count} does not divide the tower width {width}")
            origin = (f"args.model {args['model']!r}" if args.get("model") else "width // 64")
            raise ConversionError(f"{name}={count} (from {origin}) does not divide the tower "
                                  f"width {width}; pass --{name}")
    return heads
