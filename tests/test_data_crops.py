"""Random resized crops cut on the host and resampled on the device equal PIL's resize of the box."""

import numpy as np
import pytest
from PIL import Image

from tempret_jax.data import crops


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured test frame: smooth colour regions plus pixel noise, (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4 + 2, width // 4 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), int)
    return np.clip(smooth + rng.integers(-25, 26, smooth.shape), 0, 255).astype(np.uint8)


def _pixels(video) -> np.ndarray:
    """Normalised crops back to [0, 255] float64."""
    return (np.asarray(video, np.float64) * crops.CLIP_STD + crops.CLIP_MEAN) * 255


def _cut(image, box, resolution, canvas):
    """One frame's window copied onto ``canvas``: (box on the canvas, window size)."""
    (y0, y1, x0, x1), crop_box, size = crops.crop_window(image.shape[1], image.shape[0], box,
                                                         resolution, canvas.shape[0])
    canvas[:y1 - y0, :x1 - x0] = image[y0:y1, x0:x1]
    return crop_box, size


def _device_crop(image, box, resolution):
    canvas = np.zeros((crops.canvas_size(min(image.shape[:2]), resolution),) * 2 + (3,), np.uint8)
    crop_box, window = _cut(image, box, resolution, canvas)
    return _pixels(crops.resized_crops(canvas[None, None], crop_box[None], window[None],
                                       resolution)[0, 0])


@pytest.mark.parametrize("height,width,resolution", [(48, 85, 32), (85, 48, 32), (64, 64, 24),
                                                     (72, 96, 112)])
def test_device_crops_equal_pil_bilinear_resize_of_the_box(height, width, resolution):
    """Down- and upsampling (the box is larger / smaller than R), boxes at the frame's edges,
    landscape, portrait, square; PIL rounds to uint8 twice, so within one grey level."""
    image = _photo(height, width)
    rng = np.random.default_rng(1)
    boxes = [crops.random_resized_crop_box(width, height, rng, (0.05, 1.0)) for _ in range(60)]
    # The largest boxes RandomResizedCrop draws (the short side at aspect 4/3) at the corners.
    w, h = min(width, 4 / 3 * height), min(height, 4 / 3 * width)
    boxes += [(0, 0, w, h), (width - w, height - h, width, height),
              (width - 10.5, height - 7.25, width, height)]
    diffs = []
    for box in boxes:
        expected = np.asarray(Image.fromarray(image).resize((resolution, resolution),
                                                            Image.BILINEAR, box=box), np.float64)
        diffs.append(np.abs(_device_crop(image, box, resolution) - expected))
    assert max(d.max() for d in diffs) <= 1 + 1e-3
    assert np.mean([d.mean() for d in diffs]) < 0.4


def test_the_window_holds_every_pixel_the_filter_reads():
    """Resampling the box from its window on the canvas equals resampling it from the whole
    frame (padded to a larger canvas), so the margin is wide enough."""
    image = _photo(48, 85, seed=2)
    frame = np.zeros((128, 128, 3), np.uint8)
    frame[:48, :85] = image
    rng = np.random.default_rng(3)
    for _ in range(20):
        box = crops.random_resized_crop_box(85, 48, rng, (0.05, 1.0))
        whole = crops.resized_crops(frame[None, None], np.float32([box]), np.int32([[85, 48]]), 32)
        np.testing.assert_allclose(_device_crop(image, box, 32), _pixels(whole[0, 0]), atol=1e-3)


@pytest.mark.parametrize("short_side", [40, 48, 256])
def test_the_largest_boxes_fit_the_canvas(short_side):
    """Boxes of the full short side at aspect 4/3, in both orientations, with fractional edges."""
    long = 2 * short_side
    canvas = np.zeros((crops.canvas_size(short_side, 32),) * 2 + (3,), np.uint8)
    side = crops.MAX_ASPECT * short_side
    for image, box in ((np.zeros((short_side, long, 3), np.uint8), (10.5, 0, 10.5 + side, short_side)),
                       (np.zeros((long, short_side, 3), np.uint8), (0, 3.3, short_side, 3.3 + side))):
        crop_box, window = _cut(image, box, 32, canvas)
        assert np.all(window <= canvas.shape[0])
        np.testing.assert_allclose(crop_box[2:] - crop_box[:2], np.subtract(box[2:], box[:2]),
                                   rtol=1e-6)


def test_random_boxes_follow_scale_and_ratio():
    rng = np.random.default_rng(4)
    for _ in range(200):
        left, top, right, bottom = crops.random_resized_crop_box(85, 48, rng, (0.5, 1.0))
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 85 + 1e-9 and 0 <= top and bottom <= 48 + 1e-9
        assert 0.5 - 1e-9 <= w * h / (85 * 48) <= 1 + 1e-9
        assert 3 / 4 - 1e-9 <= w / h <= 4 / 3 + 1e-9


def test_a_frame_of_another_short_side_is_refused():
    canvas = np.zeros((crops.canvas_size(48, 32),) * 2 + (3,), np.uint8)
    with pytest.raises(ValueError, match="does not fit the .* canvas"):
        _cut(np.zeros((96, 170, 3), np.uint8), (0, 0, 128, 96), 32, canvas)


def test_bad_shapes_are_refused():
    frames = np.zeros((2, 3, 20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(B, T, C, C, 3\)"):
        crops.resized_crops(frames[:, :, :, :10], np.zeros((2, 4)), np.zeros((2, 2), int), 8)
    with pytest.raises(ValueError, match=r"box must be \(B, 4\)"):
        crops.resized_crops(frames, np.zeros((3, 4)), np.zeros((2, 2), int), 8)


def test_output_dtype():
    frames = np.full((1, 2, 20, 20, 3), 128, np.uint8)
    out = crops.resized_crops(frames, np.float32([[0, 0, 20, 20]]), np.int32([[20, 20]]), 8,
                              dtype="bfloat16")
    assert out.shape == (1, 2, 8, 8, 3) and out.dtype.name == "bfloat16"
    np.testing.assert_allclose(_pixels(out.astype(np.float32)), 128, atol=1.5)
