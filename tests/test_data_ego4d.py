"""Ego4D's EgoClip and EgoMCQ, as EgoVLP releases them, prepared like EK-100: readers that name
every row they skip, the three video layouts (EgoVLP's and AVION's chunks, whole files), and
records that the evaluation pipeline reads unchanged."""

import csv
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

import stamped_videos as videos
from tempret_jax.data import corpora, ego4d, pipeline, prepare

DATA = pathlib.Path(__file__).parent / "data" / "ego4d"
EGOCLIP, EGOMCQ = DATA / ego4d.EGOCLIP_FILE, DATA / ego4d.EGOMCQ_FILE
DURATION = {"vid-a": 6.0, "vid-b": 4.0}  # seconds, as the fixtures' video_dur say
CHUNK = 2  # seconds per chunk in these tests: EgoClip row 1 (1.5-2.6 s) crosses a boundary
FRAMES, SHORT = 4, 64
LAYOUTS = {  # layout -> (write a video of uid under root, the kind find_source names)
    "egovlp": (lambda root, uid: videos.write_chunks(root / uid, DURATION[uid], CHUNK,
                                                     lambda k: f"{k}.mp4"), "indexed"),
    "avion": (lambda root, uid: videos.write_chunks(root / f"{uid}.mp4", DURATION[uid], CHUNK,
                                                    lambda k: f"{k * CHUNK}.mp4"), "chunked"),
    "file": (lambda root, uid: videos.write(root / f"{uid}.mp4", 0,
                                            round(DURATION[uid] * videos.FPS)), "mp4"),
}


def _source(tmp_path, layout: str) -> pathlib.Path:
    """A folder with the fixtures in annotations/ and the two videos in ``layout``."""
    shutil.copytree(DATA, tmp_path / "annotations")
    for uid in DURATION:
        LAYOUTS[layout][0](tmp_path / "videos", uid)
    return tmp_path


def _prepare(root, **kw) -> dict:
    config = prepare.PrepareConfig(
        annotation_dir=str(root / "annotations"), video_root=str(root / "videos"),
        output_dir=str(root / "out"), corpus="ego4d", num_frames=FRAMES, short_side=SHORT,
        chunk_seconds=CHUNK, num_workers=1, progress=False, **kw)
    return prepare.prepare(config)


def _records(dataset_dir, split):
    source = tfds.builder_from_directory(str(dataset_dir)).as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def _report(summary) -> list[dict]:
    with open(summary["report"], newline="") as f:
        return list(csv.DictReader(f))


def test_egoclip_reader_keeps_the_good_rows_as_egovlp_reads_them():
    table = ego4d.read_egoclip(EGOCLIP)
    clips = table.clips
    assert list(clips.narration_id) == ["0", "1", "2", "3", "10"]  # clip_idx
    assert list(clips.video_id) == ["vid-a"] * 3 + ["vid-b"] * 2
    assert clips.narration[0] == "#C C picks a bag of clothes from the floor"
    # clip_start clamped at 0 (EgoVLP's max(clip_start, 0)), clip_end at video_dur.
    np.testing.assert_allclose(clips.start_timestamp, [0.0, 1.5, 5.1, 0.5, 2.9])
    np.testing.assert_allclose(clips.stop_timestamp, [1.4, 2.6, 6.0, 1.5, 3.9])
    np.testing.assert_allclose(clips.narration_timestamp, [0.6, 2.05, 5.75, 1.0, 3.3])
    # The common table: the first verb and noun tag (-1: none), all noun tags.
    assert list(clips.verb_class) == [93, 10, 11, -1, 31]
    assert list(clips.noun_class) == [192, 3, -1, 7, 8]
    assert clips.noun_classes == ((192, 115, 12), (3,), (), (7,), (8, 7))
    # The EgoClip table keeps every tag, for EgoNCE.
    assert table.tag_verb == ((93,), (10, 5), (11,), (), (31,))
    verbs, nouns = table.verb_multi_hot(), table.noun_multi_hot()
    assert verbs.shape == (5, ego4d.NUM_VERBS) and nouns.shape == (5, ego4d.NUM_NOUNS)
    assert list(np.flatnonzero(verbs[1])) == [5, 10] and not verbs[3].any()
    assert list(np.flatnonzero(nouns[0])) == [12, 115, 192]
    assert list(table.clip_idx) == [0, 1, 2, 3, 10]
    assert list(table.narration_source) == ["narration_pass_1"] * 3 + ["narration_pass_2"] * 2


@pytest.mark.parametrize("line, reason", [
    (6, "clip [clip_start, min(clip_end, video_dur)] [2.5, 2.0] s is empty or not finite"),
    (7, "tag_verb '[118]' is not a list of class indices in [0, 118)"),
    (8, "tag_noun \"[1, 'x']\" is not a list of class indices in [0, 582)"),
    (9, "clip_start 'abc' is not a number"),
    (10, "12 fields, expected 11"),  # pandas' error_bad_lines=False skips these
    (11, "9 fields, expected 11"),
    (12, f"duplicate id '3' (first at {EGOCLIP}:5)"),
])
def test_egoclip_reader_names_each_row_it_skips(line, reason):
    bad = ego4d.read_egoclip(EGOCLIP).bad_rows
    assert f"{EGOCLIP}:{line}: {reason}; skipped" in bad
    assert len(bad) == 7


def test_egoclip_without_its_columns_is_an_error(tmp_path):
    path = tmp_path / ego4d.EGOCLIP_FILE
    path.write_text("clip_idx,video_uid\n0,vid-a\n")  # commas: one column named 'clip_idx,...'
    with pytest.raises(prepare.ek100.AnnotationError, match=rf"{path}:1: missing column\(s\) "
                                                            r"clip_idx, video_uid"):
        ego4d.read_egoclip(path)


def test_egomcq_reader_gives_the_questions_over_distinct_clips():
    mcq = ego4d.read_egomcq(EGOMCQ)
    clips = mcq.clips
    # Each distinct (video_uid, clip_start, clip_end) once, grouped by video.
    spans = list(zip(clips.video_id, clips.start_timestamp, clips.stop_timestamp))
    assert spans == [("vid-a", 0.0, 1.0), ("vid-a", 1.5, 2.6), ("vid-a", 2.0, 3.0),
                     ("vid-a", 3.0, 4.2), ("vid-a", 4.5, 5.5), ("vid-b", 0.5, 1.5),
                     ("vid-b", 2.0, 3.5), ("vid-b", 3.0, 4.0)]
    assert len(set(clips.narration_id)) == len(clips)
    assert list(mcq.question_id) == ["0", "1"]
    assert list(mcq.query) == ["#C C opens the drawer", "#C C stirs the soup"]
    np.testing.assert_array_equal(mcq.choices, [[1, 0, 3, 4, 2], [5, 1, 0, 6, 7]])
    np.testing.assert_array_equal(mcq.answer, [0, 3])
    np.testing.assert_array_equal(mcq.type, [ego4d.INTRA_VIDEO, ego4d.INTER_VIDEO])
    # The answer of question 1 is its choice "3": vid-b 2.0-3.5 s.
    assert clips.narration[mcq.choices[1, mcq.answer[1]]] == "#C C lifts the lid"


@pytest.mark.parametrize("key, reason", [
    ("2", "answer 5 is not an integer in [0, 5)"),
    ("3", "types 3 is not 1 (inter-video) or 2 (intra-video)"),
    ("4", "choices ['0', '1', '2', '3'] are not the keys ['0', '1', '2', '3', '4']"),
    ("5", "choice 2: clip_start 'x' is not a number"),
    ("6", "is list, expected an object"),
])
def test_egomcq_reader_names_each_question_it_skips(key, reason):
    bad = ego4d.read_egomcq(EGOMCQ).bad_rows
    assert f"{EGOMCQ}: question {key!r}: {reason}; skipped" in bad and len(bad) == 5


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_gives_each_clip_its_frames_across_chunks(tmp_path, layout):
    root = _source(tmp_path, layout)
    assert ego4d.find_source(root / "videos", "", "vid-a")[0] == LAYOUTS[layout][1]
    summary = _prepare(root, splits=("train",))
    table = ego4d.read_egoclip(root / "annotations" / ego4d.EGOCLIP_FILE).clips
    records = _records(summary["dataset_dir"], "train")
    assert [r["clip_index"] for r in records] == list(range(len(table)))
    for row, r in enumerate(records):
        assert r["narration_id"].decode() == table.narration_id[row]
        assert r["narration"].decode() == table.narration[row]
        assert tuple(r["noun_classes"]) == table.noun_classes[row]
        assert videos.stamps(r) == videos.expected_stamps(
            table.start_timestamp[row], table.stop_timestamp[row], FRAMES)
    crossing = videos.stamps(records[1])  # 1.5-2.6 s: frames of both chunks
    assert min(crossing) < CHUNK * videos.FPS <= max(crossing)


def test_preparation_reports_bad_rows_by_line_and_the_evaluation_reads_it(tmp_path):
    root = _source(tmp_path, "egovlp")
    summary = _prepare(root)
    assert pathlib.Path(summary["dataset_dir"]) == prepare.dataset_dir(
        root / "out", FRAMES, SHORT, corpus="ego4d")
    assert summary["clips"] == {"train": 5, "test": 8} and summary["bad_rows"] == {
        "train": 7, "test": 5}
    reasons = [r["reason"] for r in _report(summary)]
    assert f"{root / 'annotations' / ego4d.EGOCLIP_FILE}:10: 12 fields, expected 11; skipped" \
        in reasons
    assert corpora.of_dataset(summary["dataset_dir"]) is corpora.EGO4D
    assert prepare.find_dataset(root / "out") == summary["dataset_dir"]
    # EgoMCQ's split: its clips as records; the sentences are the queries.
    mcq = ego4d.read_egomcq(EGOMCQ)
    clips, sentences = prepare.load_annotations(summary["dataset_dir"], "test")
    assert list(clips.narration_id) == list(mcq.clips.narration_id)
    assert list(sentences.narration) == list(mcq.query)
    batches = list(pipeline.eval_pipeline(summary["dataset_dir"], 4, split="test", num_frames=2,
                                          resolution=32, process_index=0, process_count=1))
    seen = np.concatenate([b["clip_index"][b["mask"]] for b in batches])
    assert list(seen) == list(range(8))
    assert batches[0]["video"].shape == (4, 1, 2, 32, 32, 3)


def test_a_missing_video_is_reported_by_name_and_a_rerun_reuses_the_shards(tmp_path,
                                                                          monkeypatch):
    root = _source(tmp_path, "avion")
    shutil.rmtree(root / "videos" / "vid-b.mp4")
    summary = _prepare(root, splits=("train",), allow_skipped=True)
    missing = {r["narration_id"]: r["reason"] for r in _report(summary) if r["narration_id"]}
    assert missing.keys() == {"3", "10"}
    assert all(f"missing video: neither {root / 'videos' / 'vid-b'}/<i>.mp4" in reason
               and f"nor {root / 'videos' / 'vid-b.mp4'}" in reason
               for reason in missing.values())
    assert summary["clips"]["train"] == 3 and summary["skipped"]["train"] == 2
    decoded = []
    process = prepare.process_video
    monkeypatch.setattr(prepare, "process_video",
                        lambda task, config: decoded.append(task.video_id) or process(task, config))
    LAYOUTS["avion"][0](root / "videos", "vid-b")
    again = _prepare(root, splits=("train",))
    assert decoded == ["vid-b"]  # vid-a's shard is reused
    assert again["clips"]["train"] == 5 and again["skipped"]["train"] == 0
