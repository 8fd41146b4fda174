"""Charades-Ego as EgoVLP evaluates on it, prepared like EK-100: train clips per action segment,
test clips over whole videos labelled with their classes, every skipped row named."""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import stamped_videos as videos
from tempret_jax.data import charades_ego, corpora, ek100, pipeline, prepare

DATA = pathlib.Path(__file__).parent / "data" / "charades_ego"
TRAIN, TEST = DATA / charades_ego.TRAIN_FILE, DATA / charades_ego.TEST_FILE
LENGTH = {"AAA1E": 4.0, "BBB2F": 3.0, "CCC3G": 3.0, "DDD4H": 2.5}  # the videos with clips
FRAMES, SHORT = 4, 64


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> pathlib.Path:
    """The fixtures in annotations/ and a video <id>.mp4 of its length for each clip's video."""
    root = tmp_path_factory.mktemp("charades")
    shutil.copytree(DATA, root / "annotations")
    for vid, seconds in LENGTH.items():
        videos.write(root / "videos" / f"{vid}.mp4", 0, round(seconds * videos.FPS))
    return root


def _prepare(root, output, **kw) -> dict:
    return prepare.prepare(prepare.PrepareConfig(
        annotation_dir=str(root / "annotations"), video_root=str(root / "videos"),
        output_dir=str(output), corpus="charades_ego", num_frames=FRAMES, short_side=SHORT,
        num_workers=1, progress=False, **kw))


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory) -> dict:
    return _prepare(source, tmp_path_factory.mktemp("out"))


def _records(dataset_dir, split):
    source = tfds.builder_from_directory(str(dataset_dir)).as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def test_train_has_one_clip_per_action_segment_named_by_its_class():
    table = charades_ego.read_charades_ego(DATA, "train")
    clips = table.clips
    assert list(clips.narration_id) == ["AAA1E_0", "AAA1E_1", "BBB2F_0"]  # EEE5J: no action
    assert list(clips.video_id) == ["AAA1E", "AAA1E", "BBB2F"]
    assert list(clips.participant_id) == ["P001", "P001", "P002"]
    assert list(clips.narration) == ["Taking a dish from somewhere",
                                     "Pouring something into a cup", "Opening a door"]
    assert list(clips.verb_class) == [92, 147, 10] and table.labels == ((92,), (147,), (10,))
    np.testing.assert_allclose(clips.start_timestamp, [0.5, 1.0, 2.5])
    np.testing.assert_allclose(clips.stop_timestamp, [2.0, 3.5, 3.0])  # 9.00 ends at length


def test_test_has_one_whole_video_clip_per_video_with_its_label_set():
    table = charades_ego.read_charades_ego(DATA, "test")
    clips = table.clips
    assert list(clips.narration_id) == ["CCC3G", "DDD4H"]
    assert list(clips.narration) == ["A person holds clothes and washes them.",
                                     "A person looks out of the window."]  # the scripts
    np.testing.assert_allclose(clips.start_timestamp, [0.0, 0.0])
    np.testing.assert_allclose(clips.stop_timestamp, [3.0, 2.5])
    assert table.labels == ((1, 5), ())  # c001 twice counts once; DDD4H has no action
    hot = table.multi_hot()
    assert hot.shape == (2, charades_ego.NUM_CLASSES)
    assert list(np.flatnonzero(hot[0])) == [1, 5] and not hot[1].any()
    assert list(clips.verb_class) == [1, -1]


@pytest.mark.parametrize("split, line, reason", [
    ("train", 5, "action 0: 'c200 1.00 2.00' is not 'cNNN start end' with cNNN below c157"),
    ("train", 5, "action 1: segment (ending by length 5.0) [2.0, 1.0] s is empty or not finite"),
    ("train", 5, "action 2: start 'x' is not a number"),
    ("train", 6, "length 'long' is not a number"),
    ("train", 7, "14 fields, expected 13"),
    ("test", 4, "action 0: 'c001 0.00' is not 'cNNN start end' with cNNN below c157"),
])
def test_the_reader_names_each_row_or_segment_it_skips(split, line, reason):
    bad = charades_ego.read_charades_ego(DATA, split).bad_rows
    path = TRAIN if split == "train" else TEST
    assert f"{path}:{line}: {reason}; skipped" in bad
    assert len(bad) == {"train": 5, "test": 1}[split]


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:100], r":? 100 classes, expected 157"),
    (lambda lines: lines[:3] + ["c004 Tidying some clothes"] + lines[3:], r":4: 'c004 Tidying "
                                                                          r"some clothes' is not 'c003"),
])
def test_a_classes_file_that_is_not_charades_is_an_error(tmp_path, edit, message):
    lines = (DATA / charades_ego.CLASSES_FILE).read_text().splitlines()
    path = tmp_path / charades_ego.CLASSES_FILE
    path.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(ek100.AnnotationError, match=str(path).replace(".", r"\.") + message):
        charades_ego.read_classes(path)


def test_records_hold_the_clips_frames_and_the_evaluation_reads_them(source, prepared):
    assert prepared["clips"] == {"train": 3, "test": 2}
    assert prepared["skipped"] == {"train": 0, "test": 0}
    assert prepared["bad_rows"] == {"train": 5, "test": 1}
    with open(prepared["report"], newline="") as f:
        reasons = [r["reason"] for r in csv.DictReader(f)]
    assert f"{source / 'annotations' / charades_ego.TEST_FILE}:4: action 0: 'c001 0.00' is not " \
           f"'cNNN start end' with cNNN below c157; skipped" in reasons
    data = prepared["dataset_dir"]
    assert corpora.of_dataset(data) is corpora.CHARADES_EGO
    for split in ("train", "test"):
        table = charades_ego.read_charades_ego(source / "annotations", split).clips
        for row, r in enumerate(_records(data, split)):
            assert r["clip_index"] == row and r["narration_id"].decode() == table.narration_id[row]
            assert videos.stamps(r) == videos.expected_stamps(
                table.start_timestamp[row], table.stop_timestamp[row], FRAMES)
    # The test sentences are the 157 class names, the texts its mAP ranks.
    _, sentences = prepare.load_annotations(data, "test")
    assert len(sentences) == charades_ego.NUM_CLASSES
    assert sentences.narration_id[5] == "c005" and sentences.narration[5] == "Washing some clothes"
    batches = list(pipeline.eval_pipeline(data, 2, split="test", num_frames=2, resolution=32,
                                          process_index=0, process_count=1))
    assert [list(b["narration_id"]) for b in batches] == [["CCC3G", "DDD4H"]]


def test_a_missing_video_is_reported_by_name_and_a_rerun_reuses_the_shards(source, tmp_path,
                                                                          monkeypatch):
    root = pathlib.Path(shutil.copytree(source, tmp_path / "src"))
    video = root / "videos" / "BBB2F.mp4"
    video.unlink()
    summary = _prepare(root, tmp_path / "out", splits=("train",), allow_skipped=True)
    with open(summary["report"], newline="") as f:
        skipped = {r["narration_id"]: r["reason"] for r in csv.DictReader(f) if r["narration_id"]}
    assert skipped == {"BBB2F_0": f"missing video: {video}"}
    decoded = []
    process = prepare.process_video
    monkeypatch.setattr(prepare, "process_video",
                        lambda task, config: decoded.append(task.video_id) or process(task, config))
    shutil.copy(source / "videos" / "BBB2F.mp4", video)
    again = _prepare(root, tmp_path / "out", splits=("train",))
    assert decoded == ["BBB2F"] and again["clips"]["train"] == 3


def test_the_command_prepares_a_corpus_by_name(source, tmp_path):
    repo = pathlib.Path(__file__).resolve().parents[1]
    command = [sys.executable, str(repo / "tools" / "prepare.py"), "--corpus", "charades_ego",
               "--annotations", str(source / "annotations"), "--videos", str(source / "videos"),
               "--output", str(tmp_path), "--num_frames", "2", "--short_side", "32",
               "--workers", "1", "--no_progress"]
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(repo)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / prepare.SUMMARY_FILE).read_text())
    assert summary["dataset_dir"] == str(tmp_path / "charades_ego" / "frames2_short32" / "1.0.0")
    assert summary["clips"] == {"train": 3, "test": 2}
    assert "6 annotation row(s) skipped" in result.stderr
