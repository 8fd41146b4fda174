"""The Frozen-in-Time that EgoVLP's pretraining starts from, assembled from a timm ImageNet
ViT-B/16 state dict and an HF DistilBERT state dict, as a FrozenInTime state dict (EgoVLP's
names) that `egovlp_import.params_from_egovlp` converts like any EgoVLP checkpoint.

Followed: showlab/EgoVLP @ 928406c, model/model.py `FrozenInTime.__init__` (video_params
pretrained, time_init 'zeros', projection 'minimal', no load_checkpoint) and
model/video_transformer.py (`SpaceTimeTransformer`, `SpaceTimeBlock`, `VarAttention`):

video_model.* from the timm file       patch_embed.proj, cls_token, pos_embed, blocks.i.{norm1,
  (torch.load, then load_state_dict      attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm:
  strict=False under the same names)     the ViT's values, unchanged; its classifier (head.*,
                                         pre_logits.*) is dropped (FrozenInTime sets head and
                                         pre_logits to nn.Identity)
video_model.temporal_embed             zeros (nn.Parameter(torch.zeros(1, F, D)), no file entry)
video_model.blocks.i.norm3             ones / zeros (nn.LayerNorm's own init)
video_model.blocks.i.timeattn          time_init 'zeros' (VarAttention initialize='zeros'):
                                         qkv weight and bias 0, proj weight 1 (every entry:
                                         upstream's "to improve training dynamics"), proj bias 0,
                                         so the temporal attention adds nothing at step 0
text_model.*                           AutoModel.from_pretrained('distilbert-base-uncased'):
                                         the file's 'distilbert.' (DistilBertForMaskedLM) or bare
                                         (DistilBertModel) names; the MLM head (vocab_transform,
                                         vocab_layer_norm, vocab_projector) is dropped, as
                                         AutoModel drops it
vid_proj.0, txt_proj.1                 RANDOM, as in EgoVLP: nn.Linear's default init, weight and
                                         bias each U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming
                                         uniform with a=sqrt(5)); drawn here from a seeded numpy
                                         generator: the same distribution, not torch's numbers

With num_frames > 1 SpaceTimeTransformer applies no `_init_weights`, so nothing else is random.
"""

import re
from typing import Any, Mapping

import numpy as np

from tempret_jax.models.hf_import import to_numpy

PROJECTION_DIM = 256  # FrozenInTime's projection_dim default (configs/pt/egoclip.json sets none)
NUM_FRAMES = 16  # configs/pt/egoclip.json video_params.num_frames (4 frames are fed to it)
# Modules FrozenInTime replaces or AutoModel does not build: never copied.
TIMM_CLASSIFIER = re.compile(r"^(head|pre_logits)\.")
DISTILBERT_MLM_HEAD = re.compile(r"^(vocab_transform|vocab_layer_norm|vocab_projector)\.")


def video_from_timm(vit: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A timm VisionTransformer state dict -> 'video_model.<same name>' float32 arrays, the
    classifier dropped. Other keys are kept, for the converter to refuse by name."""
    return {f"video_model.{k}": to_numpy(v) for k, v in vit.items()
            if not TIMM_CLASSIFIER.match(k)}


def text_from_distilbert(bert: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """An HF DistilBERT state dict ('distilbert.' or bare names) -> 'text_model.<name>'
    float32 arrays, the MLM head dropped."""
    out = {}
    for key, value in bert.items():
        key = key.removeprefix("distilbert.")
        if not DISTILBERT_MLM_HEAD.match(key):
            out[f"text_model.{key}"] = to_numpy(value)
    return out


def time_init_zeros(width: int, layers: int, num_frames: int) -> dict[str, np.ndarray]:
    """What SpaceTimeTransformer(time_init='zeros') holds where the ViT has no weights:
    temporal_embed (1, F, D) zeros, per block norm3 (D,) ones / zeros and timeattn qkv (3D, D)
    + (3D,) zeros, proj (D, D) ones + (D,) zeros (module docstring)."""
    d = width
    out = {"video_model.temporal_embed": np.zeros((1, num_frames, d), np.float32)}
    for i in range(layers):
        p = f"video_model.blocks.{i}."
        out.update({p + "norm3.weight": np.ones(d, np.float32),
                    p + "norm3.bias": np.zeros(d, np.float32),
                    p + "timeattn.qkv.weight": np.zeros((3 * d, d), np.float32),
                    p + "timeattn.qkv.bias": np.zeros(3 * d, np.float32),
                    p + "timeattn.proj.weight": np.ones((d, d), np.float32),
                    p + "timeattn.proj.bias": np.zeros(d, np.float32)})
    return out


def torch_linear_init(rng: np.random.Generator, fan_in: int, fan_out: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """nn.Linear(fan_in, fan_out)'s default init in distribution: weight (fan_out, fan_in)
    and bias (fan_out,), each uniform on +-1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(fan_in)
    weight = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
    return weight, rng.uniform(-bound, bound, fan_out).astype(np.float32)


def _count_blocks(keys, prefix: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _width(sd: Mapping[str, np.ndarray], key: str, what: str) -> int:
    if key not in sd:
        raise KeyError(f"{what}: missing key {key.split('.', 1)[1]!r}")
    return int(sd[key].shape[-1])


def frozen_in_time(vit: Mapping[str, Any], distilbert: Mapping[str, Any], *,
                   num_frames: int = NUM_FRAMES, projection_dim: int = PROJECTION_DIM,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """FrozenInTime's state dict right after its __init__ (module docstring) as float32 numpy.

    Args:
      vit: timm 'vit_base_patch16_224'-style state dict (width D, L blocks).
      distilbert: HF DistilBERT state dict (width Dt).
      num_frames: F of temporal_embed (1, F, D); EgoVLP needs F > 1 (with F == 1 its
        SpaceTimeTransformer re-initialises every Linear instead).
      projection_dim: E of vid_proj.0 (E, D) and txt_proj.1 (E, Dt).
      seed: the projections' generator.

    Raises KeyError naming a missing width-defining key, ValueError for num_frames < 2.
    """
    if num_frames < 2:
        raise ValueError(f"num_frames={num_frames}: EgoVLP's time_init 'zeros' start needs "
                         f"at least 2 frames")
    sd = {**video_from_timm(vit), **text_from_distilbert(distilbert)}
    width = _width(sd, "video_model.cls_token", "timm ViT state dict")
    text_width = _width(sd, "text_model.embeddings.LayerNorm.weight", "DistilBERT state dict")
    sd.update(time_init_zeros(width, _count_blocks(sd, "video_model.blocks."), num_frames))
    rng = np.random.default_rng(seed)
    for name, fan_in in (("vid_proj.0", width), ("txt_proj.1", text_width)):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = torch_linear_init(rng, fan_in, projection_dim)
    return sd
