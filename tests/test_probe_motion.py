"""tools/probe_motion.py: the toy clips mean what the task says, and the probe trains."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("probe_motion")


def _square(clip):
    """Per frame of a noise-free clip (T, H, W, 3): (visible, mean column of the square)."""
    painted = np.abs(clip).max(-1) > 0  # (T, H, W)
    cols = [np.flatnonzero(m.any(0)).mean() if m.any() else np.nan for m in painted]
    return painted.any((1, 2)), np.array(cols)


def test_motion_clips_move_right_for_label_1_and_left_for_label_0(tool):
    video, labels = tool.clips("motion", np.random.default_rng(0), 16, noise=0.0)
    assert video.shape == (16, 8, 32, 32, 3) and set(labels) == {0, 1}
    for clip, label in zip(video, labels):
        visible, cols = _square(clip)
        assert visible.all()
        assert np.all(np.diff(cols) >= 0) if label else np.all(np.diff(cols) <= 0)
        assert abs(cols[-1] - cols[0]) >= 8


def test_appear_clips_show_the_square_in_one_half(tool):
    video, labels = tool.clips("appear", np.random.default_rng(1), 16, noise=0.0)
    for clip, label in zip(video, labels):
        visible, _ = _square(clip)
        assert list(visible) == [bool(label)] * 4 + [not label] * 4


def test_static_clips_put_the_square_left_for_label_1(tool):
    video, labels = tool.clips("static", np.random.default_rng(2), 16, noise=0.0)
    for clip, label in zip(video, labels):
        visible, cols = _square(clip)
        assert visible.all() and np.all(cols == cols[0])
        assert (cols[0] < 16) == bool(label)


def test_probe_trains_and_reports(tool):
    lines = []
    history = tool.probe("motion", layers=1, width=16, steps=3, lr=1e-3, temporal_init=0.1,
                         rope=False, batch=4, every=2, log=lines.append)
    assert [h[0] for h in history] == [2, 3] and len(lines) == 2
    assert all(np.isfinite(loss) and 0 <= acc <= 1 for _, loss, acc in history)
    with pytest.raises(ValueError, match="task 'spin'"):
        tool.probe("spin", 1, 16, 1, 1e-3, 0.0, False)
