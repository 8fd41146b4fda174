"""tools/bench_pipeline.py: the EK-100 clip durations given to the benchmark's MP4 clips."""

import csv

import numpy as np
import pytest

from tempret_jax.data import ek100, synthetic


@pytest.fixture(scope="module")
def bench_pipeline(load_tool):
    return load_tool("bench_pipeline")


def test_ek100_durations_follow_the_test_split(ek100_dir, bench_pipeline):
    clips = ek100.read_clips(ek100_dir / ek100.TEST_CLIPS_FILE)
    real = np.asarray(clips.stop_timestamp) - np.asarray(clips.start_timestamp)
    durations = bench_pipeline.ek100_durations(200)
    assert durations.shape == (200,) and np.all(np.diff(durations) >= 0)
    assert abs(np.median(durations) - np.median(real)) < 0.05
    assert abs(durations.mean() - real.mean()) / real.mean() < 0.15  # the tail is thinned


def test_retimed_clips_have_those_durations_inside_their_videos(tmp_path, bench_pipeline):
    config = synthetic.SynthConfig(num_train_videos=3, num_test_videos=1, clips_per_video=8,
                                   clip_seconds=(8.0, 12.0))  # videos of ~80 s: nothing capped
    videos = synthetic.plan(config)
    annotations = synthetic.write_annotations(tmp_path, videos, config)
    before = ek100.read_clips(annotations / ek100.TRAIN_CLIPS_FILE)
    bench_pipeline.retime_train_clips(annotations, config.fps)
    after = ek100.read_clips(annotations / ek100.TRAIN_CLIPS_FILE)  # still a valid CSV
    np.testing.assert_array_equal(after.narration_id, before.narration_id)
    np.testing.assert_array_equal(after.verb_class, before.verb_class)
    start, stop = np.asarray(after.start_timestamp), np.asarray(after.stop_timestamp)
    expected = np.round(bench_pipeline.ek100_durations(len(start)), 2)
    np.testing.assert_allclose(np.sort(stop - start), expected, atol=0.011)
    with open(annotations / synthetic.VIDEO_INFO_FILE, newline="") as f:
        length = {r["video_id"]: float(r["duration"]) for r in csv.DictReader(f)}
    assert np.all(start >= 0)
    assert np.all(stop < [length[v] for v in after.video_id])
    np.testing.assert_array_equal(after.start_frame, (start * config.fps).astype(int) + 1)
