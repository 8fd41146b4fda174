"""The preparation on Apache Beam (DirectRunner): the same data set as the local path, record
for record, with the same summary and report; a missing video is a reported row, not a failed
job; a rerun reuses the shards of the first."""

import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tempret_jax.data import beam_prepare, prepare, synthetic
from test_data_ego4d import CHUNK, DATA, LAYOUTS

TINY = synthetic.SynthConfig(num_train_videos=3, num_test_videos=2, num_participants=2,
                             clips_per_video=4, width=128, height=72, fps=20,
                             clip_seconds=(0.8, 1.5), gap_seconds=(0.2, 0.5), gop=10)
FRAMES, SHORT = 4, 64
# Beam's DirectRunner in this process: one thread, or two that take the videos in any order.
ONE_THREAD = beam_prepare.pipeline_options("", 1)
TWO_THREADS = beam_prepare.pipeline_options("--direct_running_mode=multi_threading", 2)


def _config(annotations, videos_root, output, **kw) -> prepare.PrepareConfig:
    return prepare.PrepareConfig(annotation_dir=str(annotations), video_root=str(videos_root),
                                 output_dir=str(output), num_frames=FRAMES, short_side=SHORT,
                                 num_workers=1, progress=False, **kw)


def _dataset(summary) -> dict[str, list[dict]]:
    """{split: [record as {feature: (dtype, values)}]} of a prepared data set, in file order."""
    builder = tfds.builder_from_directory(summary["dataset_dir"])
    found = {}
    for split in builder.info.splits:
        source = builder.as_data_source(split=split)
        found[split] = [{k: _plain(v) for k, v in source[i].items()} for i in range(len(source))]
    return found


def _plain(value):
    value = np.asarray(value)
    if value.dtype == object:  # frames: JPEG byte strings, compared whole
        return value.dtype.str, [bytes(v) for v in value]
    return value.dtype.str, value.tolist()


def _outcome(summary) -> tuple[dict, str]:
    """(summary without its paths and duration, report text)."""
    kept = {k: v for k, v in summary.items() if k not in ("dataset_dir", "report", "seconds")}
    return kept, pathlib.Path(summary["report"]).read_text()


def _shards(output) -> dict[str, tuple[int, int]]:
    """{shard file: (inode, mtime_ns)}: a rewritten shard gets a new inode (atomic rename)."""
    return {str(p.relative_to(output)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted((pathlib.Path(output) / "work" / "shards").rglob("*.npz"))}


def test_ek100_through_the_command_equals_the_local_preparation(tmp_path, load_tool):
    synthetic.generate(tmp_path / "src", TINY)
    annotations = tmp_path / "src" / "annotations"
    local = prepare.prepare(_config(annotations, tmp_path / "src", tmp_path / "local"))
    tool = load_tool("prepare")
    assert tool.main(["--corpus", "ek100_mir", "--annotations", str(annotations),
                      "--videos", str(tmp_path / "src"), "--output", str(tmp_path / "beam"),
                      "--num_frames", str(FRAMES), "--short_side", str(SHORT), "--no_progress",
                      "--runner", "beam", "--direct_num_workers", "2",
                      "--beam_options=--direct_running_mode=multi_threading"]) == 0
    beam = json.loads((tmp_path / "beam" / prepare.SUMMARY_FILE).read_text())
    assert beam["dataset_dir"] == str(prepare.dataset_dir(tmp_path / "beam", FRAMES, SHORT))
    records = _dataset(beam)
    assert [len(records[s]) for s in ("train", "test")] == [12, 8]
    assert records == _dataset(local)
    assert _outcome(beam) == _outcome(local)


def test_ego4d_missing_video_is_reported_and_a_rerun_reuses_the_shards(tmp_path):
    shutil.copytree(DATA, tmp_path / "annotations")
    write_video = LAYOUTS["avion"][0]
    write_video(tmp_path / "videos", "vid-a")
    config = _config(tmp_path / "annotations", tmp_path / "videos", tmp_path / "beam",
                     corpus="ego4d", chunk_seconds=CHUNK)
    with pytest.raises(prepare.PrepareError, match=r"^train clip 3 \(vid-b\): missing video"):
        prepare.prepare(dataclasses.replace(config, strict=True),  # the first in table order
                        beam_prepare.BeamRunner(tuple(ONE_THREAD)))
    first = prepare.prepare(dataclasses.replace(config, allow_skipped=True),
                            beam_prepare.BeamRunner(tuple(TWO_THREADS)))
    report = pathlib.Path(first["report"]).read_text()
    assert first["skipped"] == {"train": 2, "test": 3} and first["clips"] == {"train": 3,
                                                                              "test": 5}
    # Each of vid-b's clips (EgoClip 3 and 10, three EgoMCQ choices) names the missing video.
    assert report.count(f"missing video: neither {tmp_path / 'videos' / 'vid-b'}/<i>.mp4") == 5
    before = _shards(tmp_path / "beam")
    assert before  # vid-a's train and test shards; vid-b has none

    write_video(tmp_path / "videos", "vid-b")
    again = prepare.prepare(config, beam_prepare.BeamRunner(tuple(ONE_THREAD)))
    after = _shards(tmp_path / "beam")
    assert {k: after[k] for k in before} == before  # reused, not decoded again
    assert sorted(set(after) - set(before)) == [f"work/shards/{s}/vid-b.npz"
                                                for s in ("test", "train")]
    local = prepare.prepare(dataclasses.replace(config, output_dir=str(tmp_path / "local")))
    assert again["clips"] == {"train": 5, "test": 8} and again["bad_rows"] == {"train": 7,
                                                                                "test": 5}
    assert _dataset(again) == _dataset(local)
    assert _outcome(again) == _outcome(local)


def test_the_options_given_win_over_the_defaults_and_a_bad_one_fails_before_any_work():
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
    given = beam_prepare.pipeline_options("--runner=FlinkRunner --direct_num_workers=3", 2)
    direct = PipelineOptions(given).view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (3, "multi_processing")
    assert PipelineOptions(given).get_all_options()["runner"] == "FlinkRunner"
    with pytest.raises(prepare.PrepareError, match=r"Beam pipeline options .*two"):
        beam_prepare.BeamRunner(tuple(beam_prepare.pipeline_options("--direct_num_workers=two")))
    with pytest.raises(prepare.PrepareError, match="direct_num_workers -1: expected >= 0"):
        beam_prepare.pipeline_options("", -1)
