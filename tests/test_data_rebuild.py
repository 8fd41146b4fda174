"""Preparing again rebuilds exactly what changed inputs concern (a video's shard, the data set),
never reuses a record made from other inputs, and first removes what a killed run left."""

import ast
import csv
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tempret_jax import atomic
from tempret_jax.data import ek100, prepare, synthetic, tasks, verify

TINY = synthetic.SynthConfig(num_train_videos=2, num_test_videos=1, num_participants=2,
                             clips_per_video=3, width=96, height=64, fps=10,
                             clip_seconds=(0.6, 1.0), gap_seconds=(0.2, 0.3), gop=10)


def _prepare(root, output) -> dict:
    return prepare.prepare(prepare.PrepareConfig(
        annotation_dir=str(root / "annotations"), video_root=str(root), output_dir=str(output),
        num_frames=4, short_side=32, num_workers=1, progress=False))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthetic.generate(root, TINY)
    return root


@pytest.fixture
def prepared(synth, tmp_path):
    """(source root, output folder, summary) of a fresh copy prepared once."""
    shutil.copytree(synth, tmp_path / "src")
    return tmp_path / "src", tmp_path / "out", _prepare(tmp_path / "src", tmp_path / "out")


@pytest.fixture
def decoded(monkeypatch) -> list:
    """The (split, video_id) of every video decoded from here on."""
    done = []
    process = prepare.process_video

    def watched(task, config):
        done.append((task.split, task.video_id))
        return process(task, config)

    monkeypatch.setattr(prepare, "process_video", watched)
    return done


def _files(dataset_dir) -> dict:
    """Inode and mtime of each record file: a regenerated data set has new files."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in pathlib.Path(dataset_dir).glob("*array_record*")}


def _records(dataset_dir, split):
    source = tfds.builder_from_directory(str(dataset_dir)).as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def test_nothing_changed_nothing_is_decoded_or_written_again(prepared, decoded):
    root, out, summary = prepared
    before = _files(summary["dataset_dir"])
    again = _prepare(root, out)
    assert decoded == []
    assert again["clips"] == summary["clips"] and _files(again["dataset_dir"]) == before


@pytest.mark.parametrize("column, edit", [
    ("narration", lambda old: "stir the soup"),
    ("verb_class", lambda old: str((int(old) + 1) % ek100.NUM_VERB_CLASSES)),
    ("all_nouns", lambda old: repr(["pan"] + ast.literal_eval(old)[1:])),
    ("stop_timestamp", lambda old: f"{old[:-5]}{float(old[-5:]) - 0.1:05.2f}"),  # HH:MM:SS.ff
])
def test_an_edited_row_rebuilds_its_video_and_the_data_set(prepared, decoded, column, edit):
    root, out, summary = prepared
    path = root / "annotations" / ek100.TRAIN_CLIPS_FILE
    row = 4  # a clip of the second train video
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows[row + 1][rows[0].index(column)] = edit(rows[row + 1][rows[0].index(column)])
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    before = _files(summary["dataset_dir"])
    again = _prepare(root, out)
    assert decoded == [("train", rows[row + 1][rows[0].index("video_id")])]
    assert _files(again["dataset_dir"]).keys() == before.keys()
    assert _files(again["dataset_dir"]) != before
    edited = ek100.read_clips(path)
    record = _records(again["dataset_dir"], "train")[row]
    assert record["clip_index"] == row
    assert record["narration"].decode() == edited.narration[row]
    assert record["verb_class"] == edited.verb_class[row]
    assert record["stop_timestamp"] == pytest.approx(edited.stop_timestamp[row])
    # The data set's copy of the CSV is the edited file, so the pipelines read the new row.
    clips, _ = prepare.load_annotations(again["dataset_dir"], "train")
    assert clips.all_nouns[row] == edited.all_nouns[row]


def test_a_touched_video_rebuilds_its_shard_only(prepared, decoded):
    root, out, summary = prepared
    video = root / "P02" / "videos" / "P02_01.MP4"
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _prepare(root, out)
    assert decoded == [("train", "P02_01")]


def test_a_skipped_video_is_not_assembled_from_its_old_shard(prepared, decoded):
    root, out, summary = prepared
    (root / "P02" / "videos" / "P02_01.MP4").unlink()  # its shard from the first run remains
    config = prepare.PrepareConfig(
        annotation_dir=str(root / "annotations"), video_root=str(root), output_dir=str(out),
        num_frames=4, short_side=32, num_workers=1, progress=False, allow_skipped=True)
    again = prepare.prepare(config)
    assert decoded == [("train", "P02_01")]
    ids = {r["narration_id"].decode() for r in _records(again["dataset_dir"], "train")}
    assert ids and not any(nid.startswith("P02_01") for nid in ids)


def test_leftovers_of_a_killed_run_are_removed_and_named(prepared, capsys):
    root, out, summary = prepared
    dataset = pathlib.Path(summary["dataset_dir"])
    incomplete = dataset.parent / f"incomplete.AB12CD_{prepare.VERSION}"  # TFDS's name
    incomplete.mkdir()
    (incomplete / "ek100_mir-train.array_record-00000-of-00001").write_bytes(b"half")
    shards = out / "work" / "shards" / "train"
    writing = atomic.path(shards / "P01_01.npz")  # a shard write killed before its rename
    temporary = writing.__enter__()
    old_style = shards / "P02_01.tmp.npz"  # an older version's temporary
    old_style.write_bytes(b"half")
    capsys.readouterr()
    _prepare(root, out)
    err = capsys.readouterr().err
    assert not incomplete.exists() and not temporary.exists() and not old_style.exists()
    assert "prepare: removed 3 leftover(s) of an interrupted run" in err
    assert all(str(p) in err for p in (incomplete, temporary, old_style))
    assert sorted(p.name for p in shards.iterdir()) == ["P01_01.npz", "P02_01.npz"]


def test_the_row_digest_covers_every_field_a_record_stores_from_its_row():
    # A stored field that `tasks.row_digest` missed would let an edited row keep a stale record.
    from_row = {"narration_id", "participant_id", "video_id", "narration", "verb_class",
                "noun_class", "noun_classes", "start_timestamp", "stop_timestamp", "start_frame",
                "stop_frame"}
    assert set(verify.features().keys()) - from_row == {"frames", "frame_times", "clip_index"}
    strings = {c: np.array(["a"]) for c in ("narration_id", "participant_id", "video_id",
                                             "narration", "verb", "noun")}
    table = ek100.ClipTable(
        path="clips.csv", **strings, narration_timestamp=np.zeros(1), start_timestamp=np.zeros(1),
        stop_timestamp=np.ones(1), start_frame=np.ones(1, np.int64), stop_frame=np.full(1, 9),
        verb_class=np.zeros(1, np.int32), noun_class=np.zeros(1, np.int32), all_nouns=(("a",),),
        noun_classes=((0,),))
    edits = {**{c: np.array(["b"]) for c in ("narration_id", "participant_id", "video_id",
                                             "narration")},
             "verb_class": np.ones(1, np.int32), "noun_class": np.ones(1, np.int32),
             "noun_classes": ((1,),), "all_nouns": (("b",),), "start_timestamp": np.full(1, 0.5),
             "stop_timestamp": np.full(1, 2.0), "start_frame": np.full(1, 2),
             "stop_frame": np.full(1, 8)}
    assert from_row <= edits.keys()
    digest = tasks.row_digest(table, 0)
    for field, value in edits.items():
        assert tasks.row_digest(ek100.ClipTable(**{**table.__dict__, field: value}), 0) != digest, field
