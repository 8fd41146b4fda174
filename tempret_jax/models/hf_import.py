"""CLIP-family weights (HF transformers `CLIPModel`, OpenAI CLIP, EVA-CLIP state dicts) -> our
tower parameters.

Our tree (unrolled layers; `scan_layers=True` stacks them under `resblocks` with a leading layer
axis, as `layers.Transformer(scan=True)` expects). D width, H heads, K = D / H; torch Linear
weights are (out, in), ours (in, out):

ours                               HF CLIPModel                       OpenAI CLIP
visual/conv1/kernel (p, p, 3, D)   vision_model.embeddings.           visual.conv1.weight
                                     patch_embedding.weight (D, 3, p, p)  (AVION: (D, 3, 1, p, p))
visual/class_embedding (D,)        vision_model.embeddings.           visual.class_embedding
                                     class_embedding
visual/positional_embedding        vision_model.embeddings.           visual.positional_embedding
  (N+1, D)                           position_embedding.weight
visual/temporal_embedding (T, D)   none: zeros                        none: zeros (AVION:
                                                                        visual.temporal_embedding)
visual/ln_pre                      vision_model.pre_layrnorm          visual.ln_pre
visual/ln_post                     vision_model.post_layernorm        visual.ln_post
visual/proj (D, E)                 visual_projection.weight (E, D) ^T visual.proj (D, E)
text/token_embedding/embedding     text_model.embeddings.             token_embedding.weight
  (V, D)                             token_embedding.weight
text/positional_embedding (77, D)  text_model.embeddings.             positional_embedding
                                     position_embedding.weight
text/ln_final                      text_model.final_layer_norm        ln_final
text/text_projection (D, E)        text_projection.weight (E, D) ^T   text_projection (D, E)
logit_scale ()                     logit_scale                        logit_scale
*/transformer/resblocks_i/         *.encoder.layers.i.                *transformer.resblocks.i.
  ln_1, ln_2                         layer_norm1, layer_norm2           ln_1, ln_2
  attn/{q,k,v}/kernel (D, H, K)      self_attn.{q,k,v}_proj.weight ^T   attn.in_proj_weight (3D, D)
  attn/{q,k,v}/bias (H, K)           self_attn.{q,k,v}_proj.bias        attn.in_proj_bias, split
  attn/out/kernel (H, K, D), bias    self_attn.out_proj ^T              attn.out_proj ^T
  mlp/c_fc (D, 4D), c_proj (4D, D)   mlp.fc1 ^T, mlp.fc2 ^T             mlp.c_fc ^T, mlp.c_proj ^T

EVA02-CLIP (EVA-CLIP/rei/eva_clip/eva_vit_model.py; the text tower has OpenAI's names):
visual.patch_embed.proj.{weight,bias} -> conv1/{kernel,bias}; visual.cls_token (1, 1, D) ->
class_embedding; visual.pos_embed (1, N+1, D) -> positional_embedding; visual.norm -> ln_post;
visual.head.{weight ^T, bias} -> proj, proj_bias; visual.blocks.i.: norm1, norm2 -> ln_1, ln_2;
attn.{q,k,v}_proj.weight ^T -> attn/{q,k,v}/kernel, attn.q_bias / v_bias -> attn/{q,v}/bias (k has
none); attn.inner_attn_ln; attn.proj -> attn/out; mlp.{w1,w2,w3,ffn_ln} keep their names.

LayerNorm: weight -> scale, bias -> bias. The temporal transformer, refinement and cross-encoder
have no CLIP counterpart: take them from `RetrievalModel.init` and merge.
"""

import functools
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

Params = Dict[str, Any]


def to_numpy(value) -> np.ndarray:
    """A torch tensor or array-like -> float32 numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


class StateDict:
    """Read access to a state dict with clear errors for missing keys."""

    def __init__(self, state_dict: Mapping[str, Any], source: str):
        self._sd = state_dict
        self._source = source

    def __contains__(self, key: str) -> bool:
        return key in self._sd

    def __call__(self, key: str) -> np.ndarray:
        if key not in self._sd:
            raise KeyError(f"{self._source} state dict: missing key {key!r}")
        return to_numpy(self._sd[key])

    def count_layers(self, prefix: str) -> int:
        """Number of consecutive layers `prefix{i}.` present."""
        n = 0
        while any(k.startswith(f"{prefix}{n}.") for k in self._sd):
            n += 1
        if n == 0:
            raise KeyError(f"{self._source} state dict: no layers under {prefix!r}")
        return n


def layer_norm_params(weight: np.ndarray, bias: np.ndarray) -> Params:
    return {"scale": weight, "bias": bias}


def linear_params(weight: np.ndarray, bias: np.ndarray) -> Params:
    return {"kernel": weight.T, "bias": bias}


def block_params(qkv, out, ln_1, ln_2, fc_1, fc_2, num_heads: int) -> Params:
    """One ResidualAttentionBlock from torch-layout (weight (out, in), bias) pairs: `qkv` the
    three (D, D) + (D,) projections, `out` the attention output, then the two LayerNorms and
    the two MLP Linears."""
    width = qkv[0][0].shape[1]
    head_dim = width // num_heads

    def head_proj(w, b):
        return {"kernel": w.T.reshape(width, num_heads, head_dim),
                "bias": b.reshape(num_heads, head_dim)}

    q, k, v = (head_proj(w, b) for w, b in qkv)
    return {
        "ln_1": layer_norm_params(*ln_1),
        "attn": {"q": q, "k": k, "v": v,
                 "out": {"kernel": out[0].T.reshape(num_heads, head_dim, width), "bias": out[1]}},
        "ln_2": layer_norm_params(*ln_2),
        "mlp": {"c_fc": linear_params(*fc_1), "c_proj": linear_params(*fc_2)},
    }


def _stack_layers(blocks: list) -> Params:
    """[block params] * L -> block params with a leading layer axis (nn.scan layout)."""
    import jax  # local: keep this module importable for pure-numpy conversion tools

    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *blocks)


def layer_stack_params(blocks: list, scan_layers: bool) -> Params:
    if scan_layers:
        return {"resblocks": _stack_layers(blocks)}
    return {f"resblocks_{i}": b for i, b in enumerate(blocks)}


# Each layer's modules other than q/k/v, in `block_params`'s order: attention output, ln_1,
# ln_2, the two MLP Linears (names after the layer prefix; each has a .weight and a .bias).
HF_LAYER_MODULES = ("self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2")
OPENAI_LAYER_MODULES = ("attn.out_proj", "ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj")


def _hf_qkv(sd: StateDict, layer: str) -> list:
    """HF keeps q, k and v as separate Linears: [(weight (D, D), bias (D,))] * 3."""
    return [(sd(f"{layer}self_attn.{n}_proj.weight"), sd(f"{layer}self_attn.{n}_proj.bias"))
            for n in "qkv"]


def _openai_qkv(sd: StateDict, layer: str) -> list:
    """OpenAI CLIP stacks q, k, v in one in_proj (3D, D) + (3D,): split into three pairs."""
    return list(zip(np.split(sd(layer + "attn.in_proj_weight"), 3),
                    np.split(sd(layer + "attn.in_proj_bias"), 3)))


def _blocks(sd: StateDict, prefix: str, num_heads: int, *, qkv: Callable,
            modules: Sequence[str]) -> list:
    """Block params of every layer `prefix{i}.`: `qkv(sd, layer prefix)` reads its q/k/v pairs,
    `modules` (HF_LAYER_MODULES | OPENAI_LAYER_MODULES) names the rest."""
    blocks = []
    for i in range(sd.count_layers(prefix)):
        layer = f"{prefix}{i}."
        attention = qkv(sd, layer)
        rest = [(sd(f"{layer}{m}.weight"), sd(f"{layer}{m}.bias")) for m in modules]
        blocks.append(block_params(attention, *rest, num_heads))
    return blocks


def _temporal(num_frames: Optional[int], width: int) -> Params:
    return {} if num_frames is None else {
        "temporal_embedding": np.zeros((num_frames, width), np.float32)}


def params_from_hf_clip(state_dict: Mapping[str, Any], *, vision_heads: int, text_heads: int,
                        num_frames: Optional[int] = None, scan_layers: bool = False) -> Params:
    """HF `CLIPModel.state_dict()` -> {'visual': ..., 'text': ..., 'logit_scale': ()}.

    `num_frames`: add a zero temporal embedding (num_frames, D) for the joint-mode video tower
    (None for frame mode, which has none). Head counts are not recoverable from the weights.
    """
    sd = StateDict(state_dict, "HF CLIPModel")
    blocks = functools.partial(_blocks, sd, qkv=_hf_qkv, modules=HF_LAYER_MODULES)
    v, t = "vision_model.", "text_model."
    conv = sd(v + "embeddings.patch_embedding.weight")                      # (D, 3, p, p)
    visual = {
        "conv1": {"kernel": conv.transpose(2, 3, 1, 0)},
        "class_embedding": sd(v + "embeddings.class_embedding"),
        "positional_embedding": sd(v + "embeddings.position_embedding.weight"),
        **_temporal(num_frames, conv.shape[0]),
        "ln_pre": layer_norm_params(sd(v + "pre_layrnorm.weight"), sd(v + "pre_layrnorm.bias")),
        "transformer": layer_stack_params(blocks(v + "encoder.layers.", vision_heads), scan_layers),
        "ln_post": layer_norm_params(sd(v + "post_layernorm.weight"),
                                     sd(v + "post_layernorm.bias")),
        "proj": sd("visual_projection.weight").T,
    }
    text = {
        "token_embedding": {"embedding": sd(t + "embeddings.token_embedding.weight")},
        "positional_embedding": sd(t + "embeddings.position_embedding.weight"),
        "transformer": layer_stack_params(blocks(t + "encoder.layers.", text_heads), scan_layers),
        "ln_final": layer_norm_params(sd(t + "final_layer_norm.weight"),
                                      sd(t + "final_layer_norm.bias")),
        "text_projection": sd("text_projection.weight").T,
    }
    return {"visual": visual, "text": text, "logit_scale": sd("logit_scale").reshape(())}


def params_from_openai_clip(state_dict: Mapping[str, Any], *, vision_heads: int,
                            text_heads: int, num_frames: Optional[int] = None,
                            scan_layers: bool = False,
                            key_map: Optional[Callable[[str], str]] = None) -> Params:
    """OpenAI CLIP (`clip.load(...).state_dict()`, also AVION's towers) -> our tower params.

    `key_map` rewrites the checkpoint's keys first (e.g. strip AVION's 'module.' prefix).
    A checkpoint's own `visual.temporal_embedding` (AVION) is used when present; otherwise
    `num_frames` adds zeros as in `params_from_hf_clip`.
    """
    if key_map is not None:
        state_dict = {key_map(k): val for k, val in state_dict.items()}
    sd = StateDict(state_dict, "OpenAI CLIP")
    conv = sd("visual.conv1.weight")
    if conv.ndim == 5:  # AVION's Conv3d kernel (D, 3, 1, p, p)
        conv = conv[:, :, 0]
    if "visual.temporal_embedding" in sd:  # AVION stores it as (1, T, D)
        temporal = {"temporal_embedding": sd("visual.temporal_embedding").reshape(
            -1, conv.shape[0])}
    else:
        temporal = _temporal(num_frames, conv.shape[0])
    visual = {
        "conv1": {"kernel": conv.transpose(2, 3, 1, 0)},
        "class_embedding": sd("visual.class_embedding"),
        "positional_embedding": sd("visual.positional_embedding"),
        **temporal,
        "ln_pre": layer_norm_params(sd("visual.ln_pre.weight"), sd("visual.ln_pre.bias")),
        "transformer": layer_stack_params(
            _blocks(sd, "visual.transformer.resblocks.", vision_heads, qkv=_openai_qkv,
                    modules=OPENAI_LAYER_MODULES), scan_layers),
        "ln_post": layer_norm_params(sd("visual.ln_post.weight"), sd("visual.ln_post.bias")),
        "proj": sd("visual.proj"),
    }
    return {"visual": visual, "text": _openai_text(sd, text_heads, scan_layers),
            "logit_scale": sd("logit_scale").reshape(())}


def _openai_text(sd: StateDict, num_heads: int, scan_layers: bool) -> Params:
    """The text tower in OpenAI's names (also AVION's, LaViLa's and EVA-CLIP's)."""
    blocks = _blocks(sd, "transformer.resblocks.", num_heads, qkv=_openai_qkv,
                     modules=OPENAI_LAYER_MODULES)
    return {
        "token_embedding": {"embedding": sd("token_embedding.weight")},
        "positional_embedding": sd("positional_embedding"),
        "transformer": layer_stack_params(blocks, scan_layers),
        "ln_final": layer_norm_params(sd("ln_final.weight"), sd("ln_final.bias")),
        "text_projection": sd("text_projection"),
    }


def _eva_block(sd: StateDict, layer: str, num_heads: int) -> Params:
    """One EVA02 block (eva_vit_model.py Block with subln and naiveswiglu): separate q/k/v
    projections without bias plus q_bias and v_bias (k has none), inner_attn_ln before the
    output projection `proj`, SwiGLU w1/w2 -> ffn_ln -> w3."""
    width = sd(f"{layer}attn.q_proj.weight").shape[1]
    head_dim = width // num_heads

    def head_proj(name, bias):
        out = {"kernel": sd(f"{layer}attn.{name}_proj.weight").T.reshape(width, num_heads,
                                                                        head_dim)}
        if bias:
            out["bias"] = sd(f"{layer}attn.{name}_bias").reshape(num_heads, head_dim)
        return out

    pair = lambda name: (sd(f"{layer}{name}.weight"), sd(f"{layer}{name}.bias"))  # noqa: E731
    out_w, out_b = pair("attn.proj")
    return {
        "ln_1": layer_norm_params(*pair("norm1")),
        "attn": {"q": head_proj("q", True), "k": head_proj("k", False),
                 "v": head_proj("v", True),
                 "inner_attn_ln": layer_norm_params(*pair("attn.inner_attn_ln")),
                 "out": {"kernel": out_w.T.reshape(num_heads, head_dim, width), "bias": out_b}},
        "ln_2": layer_norm_params(*pair("norm2")),
        "mlp": {"w1": linear_params(*pair("mlp.w1")), "w2": linear_params(*pair("mlp.w2")),
                "ffn_ln": layer_norm_params(*pair("mlp.ffn_ln")),
                "w3": linear_params(*pair("mlp.w3"))},
    }


def params_from_eva_clip(state_dict: Mapping[str, Any], *, vision_heads: int, text_heads: int,
                         num_frames: Optional[int] = None, scan_layers: bool = False) -> Params:
    """EVA02-CLIP (EVA-CLIP's `CLIP.state_dict()`: EVAVisionTransformer + OpenAI-named text
    tower) -> our tower params. The image tower's `norm` is our ln_post and its `head`
    Linear our proj + proj_bias; a video tower's `visual.temporal_embedding` (T, D) (EVA02-AT)
    is kept, else `num_frames` adds zeros as in `params_from_hf_clip`. Rope buffers
    (`visual.rope.freqs_*`) carry no parameters."""
    sd = StateDict(state_dict, "EVA-CLIP")
    conv = sd("visual.patch_embed.proj.weight")                             # (D, 3, p, p)
    width = conv.shape[0]
    blocks = [_eva_block(sd, f"visual.blocks.{i}.", vision_heads)
              for i in range(sd.count_layers("visual.blocks."))]
    head = sd("visual.head.weight")                                          # (E, D)
    visual = {
        "conv1": {"kernel": conv.transpose(2, 3, 1, 0), "bias": sd("visual.patch_embed.proj.bias")},
        "class_embedding": sd("visual.cls_token").reshape(width),
        "positional_embedding": sd("visual.pos_embed").reshape(-1, width),
        **({"temporal_embedding": sd("visual.temporal_embedding")}  # EVA02-AT's own
           if "visual.temporal_embedding" in sd else _temporal(num_frames, width)),
        "transformer": layer_stack_params(blocks, scan_layers),
        "ln_post": layer_norm_params(sd("visual.norm.weight"), sd("visual.norm.bias")),
        "proj": head.T,
        "proj_bias": sd("visual.head.bias"),
    }
    return {"visual": visual, "text": _openai_text(sd, text_heads, scan_layers),
            "logit_scale": sd("logit_scale").reshape(())}
