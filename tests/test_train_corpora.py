"""Training on each corpus: EgoClip's stream (its own narration and tags, EgoVLP's adjacent
clips), Charades-Ego's (class names, hard labels of overlapping actions), the step reading only
what its loss needs, the trainer refusing a loss its data set cannot feed, and a tiny model
training on each."""

import json
import re
import pathlib
import shutil

import numpy as np
import pytest

import stamped_videos as videos
from tempret_jax import train
from tempret_jax import step as step_lib
from tempret_jax.config import ConfigError
from tempret_jax.data import charades_ego, ego4d, pipeline, prepare, train_streams
from tiny_run import tiny_config

DATA = pathlib.Path(__file__).parent / "data"
EGO4D_SECONDS = {"vid-a": 6.0, "vid-b": 4.0}  # the EgoClip fixture's video_dur
CHUNK, FRAMES, SHORT, T, R = 2, 4, 64, 4, 32
# Charades-Ego's train fixture with a third action of AAA1E that overlaps neither of the others.
EXTRA_ACTION = ("c092 0.50 2.00;c147 1.00 3.50", "c092 0.50 2.00;c147 1.00 3.50;c005 3.60 4.00")


def _prepare(root, corpus, **kw) -> str:
    return prepare.prepare(prepare.PrepareConfig(
        annotation_dir=str(root / "annotations"), video_root=str(root / "videos"),
        output_dir=str(root / "out"), corpus=corpus, num_frames=FRAMES, short_side=SHORT,
        splits=("train",), num_workers=1, progress=False, **kw))["dataset_dir"]


def _egoclip(root: pathlib.Path, uids=tuple(EGO4D_SECONDS), **kw) -> str:
    shutil.copytree(DATA / "ego4d", root / "annotations")
    for uid in uids:  # EgoVLP's chunks
        videos.write_chunks(root / "videos" / uid, EGO4D_SECONDS[uid], CHUNK,
                            lambda k: f"{k}.mp4")
    return _prepare(root, "ego4d", chunk_seconds=CHUNK, **kw)


@pytest.fixture(scope="module")
def egoclip(tmp_path_factory) -> str:
    return _egoclip(tmp_path_factory.mktemp("egoclip"))


@pytest.fixture(scope="module")
def charades(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("charades")
    shutil.copytree(DATA / "charades_ego", root / "annotations")
    train_csv = root / "annotations" / charades_ego.TRAIN_FILE
    train_csv.write_text(train_csv.read_text().replace(*EXTRA_ACTION))
    for vid, seconds in {"AAA1E": 4.0, "BBB2F": 3.0}.items():
        videos.write(root / "videos" / f"{vid}.mp4", 0, round(seconds * videos.FPS))
    return _prepare(root, "charades_ego")


def _stream(dataset, batch=4, **kw):
    kw = {"num_frames": T, "resolution": R, "process_index": 0, "process_count": 1, **kw}
    return train_streams.corpus_train_pipeline(dataset, batch, **kw)


def _take(iterator, n):
    return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(n)]


def _rows(dataset, index) -> np.ndarray:
    """The table rows (clip_index) of record positions ``index``."""
    source = pipeline.open_split(dataset, "train")
    return np.array([int(source[int(i)]["clip_index"]) for i in index])


def _egoclip_table(dataset) -> ego4d.EgoClipTable:
    return ego4d.read_egoclip(pathlib.Path(dataset) / prepare.ANNOTATIONS / ego4d.EGOCLIP_FILE)


# ---------------------------------------------------------------------------------------------
# EgoClip.


def test_an_egoclip_batch_holds_each_clips_own_narration_and_tags(egoclip):
    batch = next(iter(_stream(egoclip)))
    assert batch.keys() == set(train_streams.STREAM_KEYS["ego4d"]) | set(pipeline.CROP_KEYS)
    assert batch["tokens"].shape == (4, 77) and batch["tokens"].dtype == np.int32
    assert batch["text_verbs"].shape == (4, ego4d.NUM_VERBS) and batch["text_verbs"].dtype == bool
    assert batch["text_nouns"].shape == (4, ego4d.NUM_NOUNS) and batch["text_nouns"].dtype == bool
    assert batch["frames"].shape[:2] == (4, T)
    table, rows = _egoclip_table(egoclip), _rows(egoclip, batch["index"])
    np.testing.assert_array_equal(batch["text_verbs"], table.verb_multi_hot()[rows])
    np.testing.assert_array_equal(batch["text_nouns"], table.noun_multi_hot()[rows])
    # clip_text as EgoVLP feeds it, the narrator's '#C C' included.
    assert all(table.clips.narration[r].startswith("#C C ") for r in rows)
    np.testing.assert_array_equal(batch["tokens"], pipeline.tokenize(table.clips.narration[rows]))


@pytest.mark.parametrize("seconds", [60.0, 3.0])
def test_adjacent_clips_follow_their_samples_from_the_same_video_and_window(egoclip, seconds):
    plain = _take(iter(_stream(egoclip)), 4)
    paired = _take(iter(_stream(egoclip, adjacent_seconds=seconds)), 4)
    table = _egoclip_table(egoclip)
    window = np.floor(table.clips.narration_timestamp / seconds)
    drawn = set()
    for alone, both in zip(plain, paired):
        assert all(v.shape[0] == 8 for v in both.values())  # 2B pairs: samples, then adjacent
        for k in alone:  # the samples are the stream without adjacent clips, bit for bit
            np.testing.assert_array_equal(both[k][:4], alone[k], err_msg=k)
        samples, adjacent = _rows(egoclip, both["index"][:4]), _rows(egoclip, both["index"][4:])
        assert list(table.clips.video_id[adjacent]) == list(table.clips.video_id[samples])
        np.testing.assert_array_equal(window[adjacent], window[samples])
        np.testing.assert_array_equal(both["text_verbs"][4:], table.verb_multi_hot()[adjacent])
        drawn |= set(zip(samples, adjacent))
    # 60 s: one window per video (rows 0-2 of vid-a, 3-4 of vid-b); 3 s: rows 0 and 1 share
    # one, every other clip is alone in its window and is its own adjacent clip.
    expected = {60.0: {(0, 1), (1, 2), (3, 4), (4, 3)}, 3.0: {(0, 1), (1, 0)}}[seconds]
    assert expected & drawn
    if seconds == 3.0:
        assert all(a == s for s, a in drawn if s >= 2)


def test_the_egoclip_stream_is_the_same_across_runs_workers_and_restores(egoclip):
    first = _take(iter(_stream(egoclip, adjacent_seconds=60.0, seed=3)), 3)
    for run in (_stream(egoclip, adjacent_seconds=60.0, seed=3),
                _stream(egoclip, adjacent_seconds=60.0, seed=3, num_workers=2)):
        for a, b in zip(first, _take(iter(run), 3)):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    it = iter(_stream(egoclip, adjacent_seconds=60.0, seed=3))
    _take(it, 1)
    restored = iter(_stream(egoclip, adjacent_seconds=60.0, seed=3))
    restored.set_state(it.get_state())
    for a, b in zip(first[1:], _take(restored, 2)):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["frames"], b["frames"])


def test_adjacent_clips_find_their_records_after_skipped_clips(tmp_path):
    # vid-a's videos are missing: its 3 clips are skipped, so table rows 3 and 4 are records 0
    # and 1, found by their clip_index.
    dataset = _egoclip(tmp_path, uids=("vid-b",), allow_skipped=True)
    source = pipeline.open_split(dataset, "train")
    adjacent = train_streams.AdjacentClips(_egoclip_table(dataset), source, 60.0)
    rng = np.random.default_rng(0)
    found = {adjacent.draw(0, source[0], rng)[0] for _ in range(20)}
    assert found == {0, 1}
    assert list(adjacent.group_rows(3)) == [3, 4] and list(adjacent.group_rows(0)) == [0, 1, 2]
    held_out = train_streams.AdjacentClips(_egoclip_table(dataset), source, 60.0, exclude=[1])
    assert {held_out.draw(0, source[0], rng)[0] for _ in range(20)} == {0}


# ---------------------------------------------------------------------------------------------
# Charades-Ego.


def test_a_charades_batch_names_the_class_and_labels_every_overlapping_action(charades):
    table = charades_ego.read_charades_ego(pathlib.Path(charades) / prepare.ANNOTATIONS, "train")
    assert list(table.clips.narration_id) == ["AAA1E_0", "AAA1E_1", "AAA1E_2", "BBB2F_0"]
    # AAA1E: c092 0.5-2.0 s and c147 1.0-3.5 s overlap; c005 3.6-4.0 s overlaps neither.
    expected = {0: {92, 147}, 1: {92, 147}, 2: {5}, 3: {10}}
    batch = next(iter(_stream(charades, batch=8)))
    assert batch.keys() == (set(train_streams.STREAM_KEYS["charades_ego"])
                            | set(pipeline.CROP_KEYS))
    assert batch["clip_classes"].shape == (8, charades_ego.NUM_CLASSES)
    assert batch["clip_classes"].dtype == bool and batch["text_class"].dtype == np.int32
    rows = _rows(charades, batch["index"])
    for row, classes, cls in zip(rows, batch["clip_classes"], batch["text_class"]):
        assert set(np.flatnonzero(classes)) == expected[row]
        assert cls == table.clips.verb_class[row]
    np.testing.assert_array_equal(batch["pos_relevance"], np.ones(8, np.float32))
    np.testing.assert_array_equal(batch["tokens"],
                                  pipeline.tokenize(table.class_names[batch["text_class"]]))


# ---------------------------------------------------------------------------------------------
# The step's keys and the trainer's start-up check.


@pytest.mark.parametrize("changes, keys", [
    (dict(loss={"name": "info_nce"}), ("tokens",)),
    (dict(loss={"name": "mi_mm"}), ("tokens",)),
    (dict(loss={"name": "egonce"}), ("tokens", "text_verbs", "text_nouns")),
    (dict(loss={"name": "sms_hard"}), ("tokens", "pos_relevance", "clip_classes", "text_class")),
    (dict(loss={"name": "sms"}), ("tokens", "pos_relevance", "clip_verb", "clip_nouns",
                                  "text_verb", "text_nouns")),
    (dict(loss={"name": "mi_mm", "reversed_negatives": ((0, 1),)}), ("tokens", "clip_verb")),
    (dict(stage=2, loss={"name": "info_nce"}), ("tokens", "clip_verb", "clip_nouns",
                                                "text_verb", "text_nouns")),
])
def test_the_step_reads_tokens_and_what_its_loss_needs(changes, keys):
    config = tiny_config("")
    config.update(changes)
    assert step_lib.batch_keys(config) == keys


@pytest.mark.parametrize("loss, corpus, missing", [
    ("egonce", "ek100_mir", "missing ['text_verbs']"),
    ("sms_hard", "ego4d", "missing ['pos_relevance', 'clip_classes', 'text_class']"),
    ("sms", "charades_ego", "missing ['clip_verb', 'clip_nouns', 'text_verb', 'text_nouns']"),
])
def test_training_a_loss_its_corpus_cannot_feed_stops_at_start_up(tmp_path, loss, corpus,
                                                                   missing):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    if corpus != "ek100_mir":  # a folder without dataset_info.json is EK-100's
        (dataset / "dataset_info.json").write_text(json.dumps({"name": corpus}))
    config = tiny_config(str(dataset), loss={"name": loss}, evals=())
    with pytest.raises(ConfigError, match=rf"loss.name '{loss}' \(stage 1\) needs batch keys "
                                          rf"\[.*\]; the {corpus} train stream of .* gives "
                                          rf"\[.*\], {re.escape(missing)}$"):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_adjacent_negatives_on_another_corpus_stop_at_start_up(tmp_path):
    config = tiny_config(str(tmp_path), loss={"name": "info_nce"}, evals=())
    config.data.adjacent_negatives_seconds = 60.0
    with pytest.raises(ConfigError, match="data.adjacent_negatives_seconds: expected 0 for a "
                                          "ek100_mir data set"):
        train.check_stream(config)


# ---------------------------------------------------------------------------------------------
# Training (8 CPU devices, batch 8: one sample per device).


@pytest.mark.parametrize("dataset, loss, adjacent", [
    ("egoclip", "egonce", 0.0), ("egoclip", "egonce", 60.0), ("egoclip", "info_nce", 0.0),
    ("charades", "sms_hard", 0.0)])
def test_a_tiny_model_trains_on_each_corpus(request, tmp_path, dataset, loss, adjacent):
    config = tiny_config(request.getfixturevalue(dataset), loss={"name": loss}, evals=(),
                         total_steps=3)
    config.checkpoint.every_steps = 3  # one save, at the end
    config.data.adjacent_negatives_seconds = adjacent
    result = train.train_and_evaluate(config, tmp_path / "run")
    assert result["step"] == 3 and not result["preempted"]
    records = [json.loads(x) for x in (tmp_path / "run" / train.TRAIN_METRICS).read_text()
               .splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
