"""Eval views of a frame: the centre crop, its left-right mirror and rescaled copies (TTA).

    frame (H, W, 3) uint8 --Resize(R) + CenterCrop(R)--> the centre crop (R, R, 3)
      [scale s: --Resize(round(s R)) + CenterCrop(R)--] [flip: columns reversed]

Every operation is torchvision's, as the authors' PyTorch code runs it (docs/design.md,
Test-time augmentation). `pipeline.EvalTransform` normalises the views.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from tempret_jax.data.crops import CLIP_MEAN


@dataclasses.dataclass(frozen=True)
class View:
    """An eval view of a frame (`center_view`): the centre crop, rescaled by ``scale``, maybe
    mirrored left-right (docs/design.md, Test-time augmentation).

    scale 1 is the centre crop itself; scale s resizes that R x R crop to round(s R) square and
    takes its centre R x R as torchvision's CenterCrop does: a crop of the larger image (s > 1),
    the smaller one padded with the mean colour (s < 1).
    """

    scale: float = 1.0
    flip: bool = False


# ContextRefine-CLIP's views (section 2.4): the original input, its flip, and 0.875x, 1.0x,
# 1.125x. The paper lists 1.0x beside the original, which it equals: the mean counts it twice.
TTA_VIEWS = (View(), View(flip=True), View(scale=0.875), View(scale=1.0), View(scale=1.125))
# The padding colour of a view smaller than the crop: CLIP_MEAN in uint8, within 0.004 of the
# exact 0 that torchvision's zero padding of the normalised input gives.
MEAN_PIXEL = np.round(np.asarray(CLIP_MEAN) * 255).astype(np.uint8)


def parse_view(spec: str) -> View:
    """'orig' | 'flip' | 'scale=S' | 'scale=S+flip' -> a `View` (S > 0); ValueError otherwise."""
    scale, flip = 1.0, False
    for part in str(spec).split("+"):
        part = part.strip()
        if part == "flip":
            flip = True
        elif part.startswith("scale="):
            try:
                scale = float(part[len("scale="):])
            except ValueError:
                scale = -1.0
            if not scale > 0:
                raise ValueError(f"{spec!r}: scale must be a positive number")
        elif part != "orig":
            raise ValueError(f"{spec!r}: expected 'orig', 'flip', 'scale=S' or 'scale=S+flip'")
    return View(scale=scale, flip=flip)


def center_view(frame: np.ndarray, resolution: int, view: View) -> np.ndarray:
    """One view of an (H, W, 3) uint8 frame: (R, R, 3) uint8, R = ``resolution``.

    The operations of the SMS-Loss eval transform that ContextRefine-CLIP builds on
    (scripts/test_mir.py: torchvision Resize(R) + CenterCrop(R)); a scale view then resizes that
    crop, the model's input, to round(s R) square and centre-crops it back to R x R, "resizes
    the video frames to 0.875x, 1.0x and 1.125x of the original resolution, followed by center
    cropping to restore the original size" (CR-CLIP 2.4); a flip mirrors the columns (the SMS
    code's torch.flip(video, dims=[-1])). Bilinear resizing (PIL).
    """
    out = _center_crop(_resize_short_side(frame, resolution), resolution)
    size = max(1, round(view.scale * resolution))
    if size != resolution:
        out = _center_crop(_resize_short_side(out, size), resolution)
    return out[:, ::-1] if view.flip else out


def _resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision's Resize(size) of (H, W, 3) uint8: the short side becomes ``size``, the long
    side int(size * long / short); an image already that size is returned as it is."""
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    short, long = sorted((h, w))
    new_long = int(size * long / short)
    nh, nw = (size, new_long) if h <= w else (new_long, size)
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision's CenterCrop(size) of (H, W, 3) uint8 -> (size, size, 3).

    Per axis: a longer one is cut from int(round((n - size) / 2)) (Python's round: half to
    even); a shorter one is padded, (size - n) // 2 before and the rest after, with MEAN_PIXEL
    where torchvision pads its (normalised) input with 0.
    """
    out = np.empty((size, size, 3), np.uint8)
    out[:] = MEAN_PIXEL
    (src_y, dst_y), (src_x, dst_x) = (_crop_slices(n, size) for n in image.shape[:2])
    out[dst_y, dst_x] = image[src_y, src_x]
    return out


def _crop_slices(n: int, size: int) -> tuple[slice, slice]:
    """(source, destination) slices of one axis of length ``n`` centred on ``size``."""
    if n >= size:
        start = int(round((n - size) / 2))
        return slice(start, start + size), slice(0, size)
    start = (size - n) // 2
    return slice(0, n), slice(start, start + n)
