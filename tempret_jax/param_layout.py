"""Saved parameters -> the layout of the model they load into (`adapt`, used by every load).

A checkpoint fits a model of the same architecture whatever two choices were made when it was
written:
- layer stacking: unrolled layers `.../transformer/resblocks_{i}/...` (converted checkpoints,
  `scan_layers=False`) and scanned ones `.../transformer/resblocks/...` with a leading layer
  axis (`scan_layers=True`) are converted into each other;
- the number of frames of the learned temporal embedding `visual/temporal_embedding` (T0, D):
  AVION's rule (avion/models/utils.py `inflate_positional_embeds`, load_temporal_fix
  'bilinear', what main_lavila_finetune_mir.py applies to a 4-frame pretrained model for 16
  frames): fewer frames are linearly interpolated (torch `F.interpolate` bilinear on
  (1, 1, T0, D), align_corners=False), more are cut to the first T.

Anything else that differs is left for the caller's shape check to name. Numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

TEMPORAL_EMBEDDING = "visual/temporal_embedding"
_UNROLLED = re.compile(r"^(.*/)resblocks_(\d+)(/.*)$")
_SCANNED = re.compile(r"^(.*/)resblocks(/.*)$")


def inflate_temporal_embedding(embedding: np.ndarray, num_frames: int) -> np.ndarray:
    """AVION's rule: (T0, D) -> (num_frames, D); see the module docstring."""
    embedding = np.asarray(embedding)
    t0 = embedding.shape[0]
    if num_frames >= t0:
        # torch's source index for align_corners=False: (dst + 0.5) * T0 / T - 0.5, clamped at
        # 0; the upper neighbour clamped at T0 - 1.
        src = np.maximum((np.arange(num_frames) + 0.5) * (t0 / num_frames) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), t0 - 1)
        hi = np.minimum(lo + 1, t0 - 1)
        w = (src - lo).astype(np.float32)[:, None]
        return (embedding[lo] * (1 - w) + embedding[hi] * w).astype(embedding.dtype)
    return embedding[:num_frames]


def _stack_layers(source: dict, target: Mapping[str, tuple]) -> dict:
    """Unrolled source layers stacked where the target is scanned."""
    groups: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    out = {}
    for key, value in source.items():
        m = _UNROLLED.match(key)
        stacked = m and f"{m[1]}resblocks{m[3]}"
        if stacked and stacked in target and key not in target:
            groups.setdefault((m[1], m[3]), {})[int(m[2])] = value
        else:
            out[key] = value
    for (head, tail), layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            # Not a whole stack: keep the keys so that the caller names what is missing.
            out.update({f"{head}resblocks_{i}{tail}": v for i, v in layers.items()})
            continue
        out[f"{head}resblocks{tail}"] = np.stack([layers[i] for i in range(len(layers))])
    return out


def _unstack_layers(source: dict, target: Mapping[str, tuple]) -> dict:
    """Scanned source layers split where the target is unrolled."""
    out = {}
    for key, value in source.items():
        m = _SCANNED.match(key)
        if m and key not in target and f"{m[1]}resblocks_0{m[2]}" in target:
            out.update({f"{m[1]}resblocks_{i}{m[2]}": np.asarray(layer)
                        for i, layer in enumerate(value)})
        else:
            out[key] = value
    return out


def adapt(source: Mapping[str, np.ndarray], target: Mapping[str, tuple]) -> dict:
    """Flat saved parameters {'a/b': array} in the target's layout.

    target: {'a/b': shape} of the model's parameters. Returns a new flat dict: layers stacked
    or split to the target's layout, the temporal embedding inflated to the target's frames.
    """
    out = _unstack_layers(_stack_layers(dict(source), target), target)
    for key, value in out.items():
        if key.endswith(TEMPORAL_EMBEDDING) and key in target:
            frames = target[key][0]
            if value.ndim == 2 and value.shape[0] != frames and tuple(
                    target[key][1:]) == value.shape[1:]:
                out[key] = inflate_temporal_embedding(value, frames)
    return out
