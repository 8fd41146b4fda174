"""Random resized crops of training clips: drawn and cut out on the host, resampled on the device.

A training clip leaves the input pipeline as uint8 frames on a fixed square canvas plus its crop
box, not as R x R float crops. The host decodes the JPEGs, draws one box per clip
(`random_resized_crop_box`) and copies the box's window into the canvas, with the margin of
pixels the resampling filter reads around the box (`crop_window`); the train step resamples the
box to R x R and normalises it on the accelerator (`resized_crops`). This moves PIL's resize and
the float normalisation, about 60 % of the host's work per clip, off the input workers, and the
batch that crosses to the device is uint8 (5.8 MB per 16-frame clip at short side 256, against
9.6 MB of float32 crops). AVION does the same split (normalisation on the GPU, the crop fused
into the decoder).

The resampling is PIL's antialiased bilinear ``Image.resize(size, BILINEAR, box=box)`` computed
in float32 as two matrix products (PIL rounds to uint8 between its two passes and at the end, so
the two differ by at most about one grey level; tested).
"""

from __future__ import annotations

import math

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, RGB in [0, 1]
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT = 4 / 3  # RandomResizedCrop's aspect ratios are in [1 / MAX_ASPECT, MAX_ASPECT]


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.5, 1.0)) -> tuple[float, float, float, float]:
    """A crop box (left, top, right, bottom) covering ``scale`` of the area, aspect in [3/4, 4/3].

    As torchvision's RandomResizedCrop: 10 tries, then the largest centred box within the ratio.
    """
    ratio = (1 / MAX_ASPECT, MAX_ASPECT)
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return left, top, left + w, top + h
    aspect = width / height
    w, h = ((height * ratio[1], height) if aspect > ratio[1] else
            (width, width / ratio[0]) if aspect < ratio[0] else (width, height))
    left, top = (width - w) / 2, (height - h) / 2
    return left, top, left + w, top + h


def _margin(short_side: int, resolution: int) -> int:
    # PIL's bilinear filter reads up to max(1, box / R) / 2 + 1 pixels beyond the box's edge.
    return math.ceil(max(1.0, MAX_ASPECT * short_side / resolution) / 2) + 1


def canvas_size(short_side: int, resolution: int) -> int:
    """The side of the square canvas that holds any crop window of frames with this short side.

    A box is at most short_side x (4/3) short_side (either way round); the window adds the
    filter's margin on each side, one pixel for the box's fractional edges and one for rounding
    (a box of exactly (4/3) short_side may come out a hair wider).
    """
    return math.ceil(MAX_ASPECT * short_side) + 2 * _margin(short_side, resolution) + 2


def crop_window(width: int, height: int, box, resolution: int, canvas: int):
    """The part of a width x height frame that resampling ``box`` to R x R reads.

    Returns ((y0, y1, x0, x1) of the window in the frame, the box in window pixels (4,) float32,
    the window's (width, height) (2,) int32). Raises ValueError if it does not fit a canvas of
    side ``canvas``.
    """
    margin = _margin(min(width, height), resolution)
    left, top, right, bottom = box
    x0, y0 = max(0, math.floor(left) - margin), max(0, math.floor(top) - margin)
    x1, y1 = min(width, math.ceil(right) + margin), min(height, math.ceil(bottom) + margin)
    if y1 - y0 > canvas or x1 - x0 > canvas:
        raise ValueError(f"the crop window {x1 - x0}x{y1 - y0} of a {width}x{height} frame does "
                         f"not fit the {canvas}x{canvas} canvas (made for frames of one short "
                         f"side; is this frame's short side different?)")
    return ((y0, y1, x0, x1),
            np.array([left - x0, top - y0, right - x0, bottom - y0], np.float32),
            np.array([x1 - x0, y1 - y0], np.int32))


# ---------------------------------------------------------------------------------------------
# On the device.


def _filter_matrix(start, stop, extent, size: int, out_size: int):
    """PIL's antialiased bilinear weights of one axis: (B, out_size, size) float32.

    Row i resamples output pixel i from the input pixels j < ``extent`` (B,) of each clip:
    a triangle of half-width max(scale, 1) centred on start + (i + 0.5) * scale, normalised,
    where scale = (stop - start) / out_size (PIL's ``precompute_coeffs``).
    """
    import jax.numpy as jnp
    scale = (stop - start)[:, None, None] / out_size
    filterscale = jnp.maximum(scale, 1.0)
    center = start[:, None, None] + (jnp.arange(out_size)[None, :, None] + 0.5) * scale
    j = jnp.arange(size)[None, None, :]
    w = jnp.maximum(0.0, 1.0 - jnp.abs((j + 0.5 - center) / filterscale))
    w = jnp.where(j < extent[:, None, None], w, 0.0)
    return w / jnp.sum(w, axis=-1, keepdims=True)


def resized_crops(frames, box, window, resolution: int, dtype="float32"):
    """Each clip's box resampled to R x R and CLIP-normalised, on the device (jit-able).

    Args:
      frames: (B, T, C, C, 3) uint8 canvases (`pipeline.cut_crops`).
      box: (B, 4) float32 (left, top, right, bottom) in canvas pixels.
      window: (B, 2) int32 (width, height) of the valid top-left part of each canvas.
      resolution: R.
      dtype: of the result.
    Returns:
      (B, T, R, R, 3) ``dtype``: (resampled / 255 - CLIP_MEAN) / CLIP_STD.
    """
    import jax
    import jax.numpy as jnp
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.shape[2] != frames.shape[3]:
        raise ValueError(f"frames must be (B, T, C, C, 3) canvases, got {frames.shape}")
    if box.shape != (frames.shape[0], 4) or window.shape != (frames.shape[0], 2):
        raise ValueError(f"box must be (B, 4) and window (B, 2) for B = {frames.shape[0]}, "
                         f"got {box.shape} and {window.shape}")
    size = frames.shape[2]
    box = box.astype(jnp.float32)
    wx = _filter_matrix(box[:, 0], box[:, 2], window[:, 0], size, resolution)  # (B, R, C)
    wy = _filter_matrix(box[:, 1], box[:, 3], window[:, 1], size, resolution)
    # TPUs multiply float32 in one bfloat16 pass by default (errors of ~1 grey level); HIGH is
    # three passes there and TF32 on GPUs (~0.1 level), float32 on CPUs.
    high = jax.lax.Precision.HIGH
    x = frames.astype(jnp.float32)
    x = jnp.einsum("btyxc,brx->btyrc", x, wx, precision=high)
    x = jnp.einsum("btyrc,bqy->btqrc", x, wy, precision=high)
    std = jnp.asarray(CLIP_STD, jnp.float32)
    x = x * (1 / (255 * std)) - jnp.asarray(CLIP_MEAN, jnp.float32) / std
    return x.astype(dtype)
