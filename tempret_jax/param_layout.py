"""Saved parameters -> the layout of the model they load into (`adapt`, used by every load).

A checkpoint fits a model of the same architecture whatever two choices were made when it was
written:
- layer stacking: unrolled layers `.../transformer/resblocks_{i}/...` (converted checkpoints,
  `scan_layers=False`) and scanned ones `.../transformer/resblocks/...` with a leading layer
  axis (`scan_layers=True`) are converted into each other;
- the number of frames of the learned temporal embedding `visual/temporal_embedding` (T0, D),
  by the rule `temporal_fix` names (the model config's `vision.temporal_fix`):
  'bilinear'  AVION's (avion/models/utils.py `inflate_positional_embeds`, load_temporal_fix
              'bilinear', what main_lavila_finetune_mir.py applies to a 4-frame pretrained
              model for 16 frames): more frames are linearly interpolated (torch
              `F.interpolate` bilinear on (1, 1, T0, D), align_corners=False);
  'zeros'     EgoVLP's default (model/model.py `FrozenInTime._inflate_positional_embeds`,
              load_temporal_fix='zeros'): the T0 rows, then zero rows;
  'bilinear_corners'  EgoVLP's 'bilinear' option: the same interpolation with
              align_corners=True (the first and last rows kept exactly).
  Fewer frames are cut to the first T under every rule, as both codes do.

Anything else that differs is left for the caller's shape check to name. Numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

TEMPORAL_EMBEDDING = "visual/temporal_embedding"
_UNROLLED = re.compile(r"^(.*/)resblocks_(\d+)(/.*)$")
_SCANNED = re.compile(r"^(.*/)resblocks(/.*)$")


TEMPORAL_FIXES = ("bilinear", "zeros", "bilinear_corners")


def inflate_temporal_embedding(embedding: np.ndarray, num_frames: int,
                               temporal_fix: str = "bilinear") -> np.ndarray:
    """(T0, D) -> (num_frames, D) by the rule `temporal_fix` (module docstring)."""
    if temporal_fix not in TEMPORAL_FIXES:
        raise ValueError(f"temporal_fix: expected one of {TEMPORAL_FIXES}, got {temporal_fix!r}")
    embedding = np.asarray(embedding)
    t0 = embedding.shape[0]
    if num_frames <= t0:
        return embedding[:num_frames]
    if temporal_fix == "zeros":
        pad = np.zeros((num_frames - t0,) + embedding.shape[1:], embedding.dtype)
        return np.concatenate([embedding, pad])
    if temporal_fix == "bilinear":
        # torch's source index for align_corners=False: (dst + 0.5) * T0 / T - 0.5, clamped at
        # 0; the upper neighbour clamped at T0 - 1.
        src = np.maximum((np.arange(num_frames) + 0.5) * (t0 / num_frames) - 0.5, 0.0)
    else:  # align_corners=True: dst * (T0 - 1) / (T - 1)
        src = np.arange(num_frames) * ((t0 - 1) / (num_frames - 1))
    lo = np.minimum(np.floor(src).astype(int), t0 - 1)
    hi = np.minimum(lo + 1, t0 - 1)
    w = (src - lo).astype(np.float32)[:, None]
    return (embedding[lo] * (1 - w) + embedding[hi] * w).astype(embedding.dtype)


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


def adapt(source: Mapping[str, np.ndarray], target: Mapping[str, tuple],
          temporal_fix: str = "bilinear") -> dict:
    """Flat saved parameters {'a/b': array} in the target's layout.

    target: {'a/b': shape} of the model's parameters. Returns a new flat dict: layers stacked
    or split to the target's layout, the temporal embedding resized to the target's frames by
    `temporal_fix` (module docstring).
    """
    out = _unstack_layers(_stack_layers(dict(source), target), target)
    for key, value in out.items():
        if key.endswith(TEMPORAL_EMBEDDING) and key in target:
            frames = target[key][0]
            if value.ndim == 2 and value.shape[0] != frames and tuple(
                    target[key][1:]) == value.shape[1:]:
                out[key] = inflate_temporal_embedding(value, frames, temporal_fix)
    return out
