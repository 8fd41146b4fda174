"""EgoVLP's Frozen-in-Time weights (showlab/EgoVLP `FrozenInTime` state dicts) -> our towers'
parameters (models/space_time.py, models/distilbert.py).

EgoVLP's trainer (base/base_trainer.py `_save_checkpoint`) saves {'arch', 'epoch',
'state_dict' ('module.' keys of DistributedDataParallel), 'optimizer', 'monitor_best',
'config' (its parse_config.ConfigParser, read as a placeholder: torch_files)}. D width,
H heads, K = D / H; torch Linear weights are (out, in), ours (in, out):

ours                                        EgoVLP (after 'module.')
visual/conv1/{kernel (p, p, 3, D), bias}    video_model.patch_embed.proj.{weight (D, 3, p, p), bias}
visual/class_embedding (D,)                 video_model.cls_token (1, 1, D)
visual/positional_embedding (N+1, D)        video_model.pos_embed (1, N+1, D)
visual/temporal_embedding (F, D)            video_model.temporal_embed (1, F, D)
visual/resblocks_i/ln_time, ln_1, ln_2      video_model.blocks.i.norm3, norm1, norm2
visual/resblocks_i/time_attn/{q,k,v,out}    video_model.blocks.i.timeattn.qkv (3D, D) split, .proj
visual/resblocks_i/attn/{q,k,v,out}         video_model.blocks.i.attn.qkv, .proj
visual/resblocks_i/mlp/c_fc, c_proj         video_model.blocks.i.mlp.fc1, fc2
visual/ln_post                              video_model.norm
visual/proj (D, E), proj_bias               vid_proj.0.{weight ^T, bias}
text/token_embedding/embedding              text_model.embeddings.word_embeddings.weight
text/positional_embedding (512, D)          text_model.embeddings.position_embeddings.weight
text/ln_embed                               text_model.embeddings.LayerNorm
text/resblocks_i/attn/{q,k,v,out}           text_model.transformer.layer.i.attention.
                                              {q_lin, k_lin, v_lin, out_lin}
text/resblocks_i/ln_1, ln_2                 ...layer.i.sa_layer_norm, output_layer_norm
text/resblocks_i/mlp/c_fc, c_proj           ...layer.i.ffn.lin1, lin2
text/text_projection (D, E), proj_bias      txt_proj.1.{weight ^T, bias} (txt_proj.0 is the ReLU)
logit_scale ()                              none: log(1 / 0.05), EgoVLP's fixed temperature

`text_model.embeddings.position_ids` (a buffer of some transformers versions) carries nothing.
"""

import copy
import math
from typing import Any, Mapping

import numpy as np

from tempret_jax.models import hf_import
from tempret_jax.models import retrieval
from tempret_jax.models.hf_import import Params, StateDict, layer_norm_params

TEMPERATURE = 0.05  # EgoVLP: EgoNCE / InfoNCE temperature (configs/pt/egoclip.json, paper §4)


def is_egovlp(keys) -> bool:
    """Whether state-dict keys (without 'module.') are a FrozenInTime's."""
    keys = list(keys)
    return (any(k.startswith("video_model.") for k in keys)
            and any(k.startswith("text_model.") for k in keys))


def _pair(sd: StateDict, name: str) -> tuple[np.ndarray, np.ndarray]:
    return sd(f"{name}.weight"), sd(f"{name}.bias")


def _fused_qkv(sd: StateDict, name: str) -> list:
    """Frozen-in-Time's qkv Linear (3D, D) + (3D,), chunked in q, k, v order: three pairs."""
    return list(zip(np.split(sd(f"{name}.qkv.weight"), 3), np.split(sd(f"{name}.qkv.bias"), 3)))


def _video_block(sd: StateDict, layer: str, heads: int) -> Params:
    def block(attention):  # a pre-LN block whose attention is `attention` (norms, MLP shared)
        return hf_import.block_params(
            _fused_qkv(sd, layer + attention), _pair(sd, f"{layer}{attention}.proj"),
            _pair(sd, f"{layer}norm1"), _pair(sd, f"{layer}norm2"), _pair(sd, f"{layer}mlp.fc1"),
            _pair(sd, f"{layer}mlp.fc2"), heads)

    return dict(block("attn"), time_attn=block("timeattn")["attn"],
                ln_time=layer_norm_params(*_pair(sd, f"{layer}norm3")))


def _text_block(sd: StateDict, layer: str, heads: int) -> Params:
    qkv = [_pair(sd, f"{layer}attention.{n}_lin") for n in "qkv"]
    return hf_import.block_params(
        qkv, _pair(sd, f"{layer}attention.out_lin"), _pair(sd, f"{layer}sa_layer_norm"),
        _pair(sd, f"{layer}output_layer_norm"), _pair(sd, f"{layer}ffn.lin1"),
        _pair(sd, f"{layer}ffn.lin2"), heads)


def _video(sd: StateDict, heads: int) -> Params:
    v = "video_model."
    conv = sd(v + "patch_embed.proj.weight")
    out = {"conv1": {"kernel": conv.transpose(2, 3, 1, 0), "bias": sd(v + "patch_embed.proj.bias")},
           "class_embedding": sd(v + "cls_token").reshape(-1),
           "positional_embedding": sd(v + "pos_embed")[0],
           "temporal_embedding": sd(v + "temporal_embed")[0],
           "ln_post": layer_norm_params(*_pair(sd, v + "norm"))}
    for i in range(sd.count_layers(v + "blocks.")):
        out[f"resblocks_{i}"] = _video_block(sd, f"{v}blocks.{i}.", heads)
    weight, bias = _pair(sd, "vid_proj.0")
    return dict(out, proj=weight.T, proj_bias=bias)


def _text(sd: StateDict, heads: int) -> Params:
    e = "text_model.embeddings."
    out = {"token_embedding": {"embedding": sd(e + "word_embeddings.weight")},
           "positional_embedding": sd(e + "position_embeddings.weight"),
           "ln_embed": layer_norm_params(*_pair(sd, e + "LayerNorm"))}
    prefix = "text_model.transformer.layer."
    for i in range(sd.count_layers(prefix)):
        out[f"resblocks_{i}"] = _text_block(sd, f"{prefix}{i}.", heads)
    weight, bias = _pair(sd, "txt_proj.1")
    return dict(out, text_projection=weight.T, proj_bias=bias)


def params_from_egovlp(state_dict: Mapping[str, Any], *, vision_heads: int,
                       text_heads: int) -> Params:
    """A FrozenInTime state dict (keys without 'module.') -> {'visual', 'text', 'logit_scale'}
    as float32 numpy with unrolled layers (table in the module docstring). Raises KeyError
    naming a missing key."""
    sd = StateDict(state_dict, "EgoVLP")
    return {"visual": _video(sd, vision_heads), "text": _text(sd, text_heads),
            "logit_scale": np.float32(math.log(1 / TEMPERATURE))}


# What EgoVLP's saved config must say for these towers (configs/ft/epic.json, model/model.py).
EXPECTED_CONFIG = {"type": "FrozenInTime", "video_params.model": "SpaceTimeTransformer",
                   "video_params.arch_config": "base_patch16_224",
                   "video_params.attention_style": "frozen-in-time",
                   "text_params.model": "distilbert-base-uncased", "projection": "minimal"}


def check_config(saved: Mapping[str, Any]) -> list[str]:
    """Problems of an EgoVLP checkpoint's saved config ({'arch': {'type', 'args'}, ...}, the
    ConfigParser's `_config`) for these towers, one line each; [] when it fits or is absent.
    Absent entries take FrozenInTime's defaults."""
    arch = saved.get("arch") if isinstance(saved, Mapping) else None
    if not isinstance(arch, Mapping):
        return []
    args = arch.get("args") or {}
    problems = []
    for dotted, expected in EXPECTED_CONFIG.items():
        node = arch if dotted == "type" else args
        for part in dotted.split("."):
            node = node.get(part, expected) if isinstance(node, Mapping) else expected
        if node != expected:
            problems.append(f"config arch.{'' if dotted == 'type' else 'args.'}{dotted} is "
                            f"{node!r}, expected {expected!r}")
    return problems


def _layers(tower: Mapping[str, Any]) -> int:
    return sum(1 for k in tower if k.startswith("resblocks_"))


def infer_model_config(params: Mapping[str, Any], *, vision_heads: int, text_heads: int,
                       base=None):
    """The model config of converted EgoVLP parameters: the 'egovlp_b16' design
    (retrieval._egovlp) with the sizes the arrays have; `base` supplies everything that is
    not architecture (optional modules, dtype, layer stacking)."""
    design = retrieval.model_config("egovlp_b16")
    c = copy.deepcopy(base) if base is not None else design
    for key in (*retrieval.ARCHITECTURE, "vision.temporal_fix"):
        block, _, name = key.rpartition(".")
        (c[block] if block else c)[name] = (design[block] if block else design)[name]
    visual, text = params["visual"], params["text"]
    patch, _, _, v_width = visual["conv1"]["kernel"].shape
    grid = int(round((visual["positional_embedding"].shape[0] - 1) ** 0.5))
    v_hidden = visual["resblocks_0"]["mlp"]["c_fc"]["kernel"].shape[1]
    vocab, t_width = text["token_embedding"]["embedding"].shape
    t_hidden = text["resblocks_0"]["mlp"]["c_fc"]["kernel"].shape[1]
    c.embed_dim = int(visual["proj"].shape[1])
    c.vision.update(image_size=int(grid * patch), patch_size=int(patch), width=int(v_width),
                    layers=_layers(visual), heads=vision_heads, mlp_ratio=v_hidden / v_width,
                    num_frames=int(visual["temporal_embedding"].shape[0]), frame_mode=False,
                    pos_embed="learned")
    positions = int(text["positional_embedding"].shape[0])
    c.text.update(vocab_size=int(vocab), width=int(t_width), layers=_layers(text),
                  heads=text_heads, mlp_ratio=t_hidden / t_width, max_positions=positions,
                  context_length=min(c.text.context_length, positions))
    return c
