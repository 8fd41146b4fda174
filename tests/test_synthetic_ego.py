"""Synthetic EgoClip, EgoMCQ and Charades-Ego (`data.synthetic_ego`) in the released formats:
the files parse with csv / json into the documented columns and types, the tags, questions and
actions are consistent, the videos decode to their stated duration, and a seed fixes every byte."""

import ast
import csv
import json
import math
import re
import uuid

import av
import pytest

from tempret_jax.data import synthetic
from tempret_jax.data import synthetic_ego as se

CHUNK = 4  # seconds: short enough that clips cross chunk boundaries
CONFIG = se.EgoConfig(**{**se.TEST_SIZES, "chunk_seconds": CHUNK, "clips_per_video": 8})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return se.generate(tmp_path_factory.mktemp("ego"), CONFIG)


def _egoclip(files_or_path):
    path = getattr(files_or_path, "egoclip", files_or_path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        assert tuple(reader.fieldnames) == se.EGOCLIP_COLUMNS
        return list(reader)


def _mcq(files):
    return json.loads(files.egomcq.read_text())


def _charades(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == se.CHARADES_COLUMNS
        return list(reader)


def _frame_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _tags(text: str) -> list[int]:
    tags = ast.literal_eval(text)
    assert isinstance(tags, list) and all(isinstance(t, int) for t in tags), text
    return tags


def test_egoclip_rows_have_egovlps_columns_and_types(files):
    rows = _egoclip(files)
    assert [int(r["clip_idx"]) for r in rows] == list(range(len(rows)))
    for r in rows:
        uuid.UUID(r["video_uid"])
        start, time, end = float(r["clip_start"]), float(r["narration_time"]), float(r["clip_end"])
        assert 0 <= start <= time <= end <= float(r["video_dur"])
        assert r["narration_source"] in ("narration_pass_1", "narration_pass_2")
        assert int(r["narration_ind"]) >= 0
        assert re.fullmatch(r"#C C [a-z]+s the [a-z]+ [a-z]+.*", r["clip_text"]), r["clip_text"]
        assert all(0 <= t < se.NUM_EGO4D_VERBS for t in _tags(r["tag_verb"]))
        assert all(0 <= t < se.NUM_EGO4D_NOUNS for t in _tags(r["tag_noun"]))


def test_some_narrations_join_two_actions_with_two_verb_tags(files):
    two = [r for r in _egoclip(files) if len(_tags(r["tag_verb"])) == 2]
    assert two and all(" and " in r["clip_text"] for r in two)
    assert any(len(_tags(r["tag_noun"])) > 1 for r in _egoclip(files))


def test_tags_are_distinct_fixed_indices_in_ego4ds_ranges():
    assert len(set(se.VERB_TAGS)) == len(se.VERB_TAGS)
    assert len(set(se.NOUN_TAGS)) == len(se.NOUN_TAGS)
    assert max(se.VERB_TAGS) < se.NUM_EGO4D_VERBS and max(se.NOUN_TAGS) < se.NUM_EGO4D_NOUNS


def test_a_videos_clips_follow_each_other_in_one_60s_window(files):
    by_video = {}
    for r in _egoclip(files):
        by_video.setdefault(r["video_uid"], []).append(r)
    assert len(by_video) == CONFIG.num_clip_videos
    for rows in by_video.values():
        assert [int(r["narration_ind"]) for r in rows] == list(range(len(rows))) and len(rows) > 1
        assert all(float(a["clip_end"]) <= float(b["clip_start"]) for a, b in zip(rows, rows[1:]))
        # EgoNCE's scene-aware negative: a clip of the same video and narration_time // 60.
        assert len({float(r["narration_time"]) // 60 for r in rows}) == 1


def test_egovlp_chunks_hold_every_clip_and_the_whole_video(files):
    rows = _egoclip(files)
    crossing = [r for r in rows if float(r["clip_start"]) // CHUNK != float(r["clip_end"]) // CHUNK]
    assert crossing  # EgoVLP then reads two chunks
    for r in rows:  # EgoVLP's _get_video_path
        for t in (r["clip_start"], r["clip_end"]):
            assert (files.ego4d_videos / r["video_uid"] / f"{int(float(t) // CHUNK)}.mp4").is_file()
    r = crossing[0]
    chunks = sorted((files.ego4d_videos / r["video_uid"]).iterdir(), key=lambda p: int(p.stem))
    counts = [_frame_count(p) for p in chunks]
    assert counts[:-1] == [CHUNK * CONFIG.fps] * (len(chunks) - 1)
    assert sum(counts) == round(float(r["video_dur"]) * CONFIG.fps)


def test_egomcq_questions_as_egovlps_loader_reads_them(files):
    questions = _mcq(files)
    assert list(questions) == [str(i) for i in range(CONFIG.num_mcq_questions)]
    for q in questions.values():
        assert set(q) == {"query", "choices", "answer", "types"}
        assert list(q["choices"]) == ["0", "1", "2", "3", "4"]
        choices = list(q["choices"].values())
        assert all(tuple(c) == se.EGOCLIP_COLUMNS for c in [q["query"], *choices])
        texts = [c["clip_text"] for c in choices]
        assert texts[q["answer"]] == q["query"]["clip_text"]
        assert texts.count(q["query"]["clip_text"]) == 1
        assert choices[q["answer"]] == q["query"]
        videos = {c["video_uid"] for c in choices}
        assert (q["types"], len(videos)) in ((1, 5), (2, 1))
        if q["types"] == 2:
            assert videos == {q["query"]["video_uid"]}
        assert _tags(q["query"]["tag_verb"]) and _tags(q["query"]["tag_noun"])
    assert {q["types"] for q in questions.values()} == {1, 2}


def test_egomcq_videos_are_held_out_of_egoclip(files):
    mcq_videos = {c["video_uid"] for q in _mcq(files).values() for c in q["choices"].values()}
    assert len(mcq_videos) == CONFIG.num_mcq_videos
    assert not mcq_videos & {r["video_uid"] for r in _egoclip(files)}
    for video in mcq_videos:
        assert (files.ego4d_videos / video / "0.mp4").is_file()


def test_charades_ego_rows_have_actions_inside_decodable_videos(files):
    train, test = _charades(files.charades_train), _charades(files.charades_test)
    assert (len(train), len(test)) == (CONFIG.num_charades_train, CONFIG.num_charades_test)
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    for r in train + test:
        assert re.fullmatch(r"[0-9A-Z]{5}EGO", r["id"]) and r["egocentric"] == "Yes"
        length, actions = float(r["length"]), r["actions"].split(";")
        assert 1 <= len(actions) <= CONFIG.charades_actions[1]
        for action in actions:
            cls, start, end = action.split(" ")
            assert re.fullmatch(r"c\d{3}", cls) and int(cls[1:]) < se.NUM_CHARADES_CLASSES
            assert 0 <= float(start) < float(end) <= length
        frames = _frame_count(files.charades_videos / f"{r['id']}.mp4")
        assert frames / CONFIG.fps == pytest.approx(length, abs=0.006)


def test_charades_classes_are_verb_x_shape_padded_to_157(files):
    lines = files.charades_classes.read_text().splitlines()
    assert [line[:4] for line in lines] == [f"c{i:03d}" for i in range(se.NUM_CHARADES_CLASSES)]
    assert all(re.fullmatch(r"c\d{3} [a-z0-9 ]+", line) for line in lines)  # no commas
    names = [line.split(" ", 1)[1] for line in lines]
    actions = {r["id"]: r["actions"] for r in
               _charades(files.charades_train) + _charades(files.charades_test)}
    for video in se.plan_charades(CONFIG):
        classes = [int(a[1:4]) for a in actions[video.video_id].split(";")]
        for clip, cls in zip(video.clips, classes, strict=True):
            verb, noun = synthetic.VERBS[clip.verb], synthetic.NOUNS[clip.nouns[0]]
            shape = noun.split(":")[0]
            assert names[cls] == " ".join([verb.words[0], shape, verb.particle]).strip()
    real = len(synthetic.VERBS) * len(synthetic.SHAPES)  # 36
    assert all(name.startswith("unused") for name in names[real:])


def test_the_same_seed_writes_the_same_bytes(files, tmp_path):
    again = se.generate(tmp_path, CONFIG)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    root = files.egoclip.parent.parent
    assert written == sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert all((tmp_path / p).read_bytes() == (root / p).read_bytes() for p in written)
    other = se.egoclip_rows(se.plan_ego4d(se.EgoConfig(**{**se.TEST_SIZES, "seed": 1})), 15)
    assert [r["clip_text"] for r in other] != [r["clip_text"] for r in _egoclip(again)][:len(other)]


@pytest.mark.parametrize("change, message", [
    (dict(layout="chunked"), "layout 'chunked': expected one of"),
    (dict(num_mcq_videos=4), "num_mcq_videos 4: expected at least 5"),
    (dict(charades_actions=(0, 2)), "charades_actions"),
    (dict(size=63), "must be even"),
    (dict(num_mcq_questions=100), "EgoMCQ question"),
])
def test_bad_sizes_are_named(change, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        se.generate(tmp_path, se.EgoConfig(**{**se.TEST_SIZES, "num_charades_train": 0,
                                              "num_charades_test": 0, **change}))


def test_the_tool_writes_avions_layout_and_refuses_an_ek100_layout(load_tool, tmp_path, capsys):
    tool = load_tool("synthkitchens")
    out = tmp_path / "ego"
    assert tool.main(["--out", str(out), "--format", "ego", "--size", "test", "--layout", "avion",
                      "--chunk-seconds", str(CHUNK)]) == 0
    assert "EgoClip, EgoMCQ and Charades-Ego (test, avion)" in capsys.readouterr().out
    row = _egoclip(out / se.EGO4D_DIR / se.EGOCLIP_FILE)[0]
    frames, per_chunk = round(float(row["video_dur"]) * CONFIG.fps), CHUNK * CONFIG.fps
    folder = out / se.EGO4D_DIR / se.VIDEO_DIR / f"{row['video_uid']}.mp4"
    assert sorted(int(p.stem) for p in folder.iterdir()) == \
        [i * CHUNK for i in range(math.ceil(frames / per_chunk))]
    assert tool.main(["--out", str(tmp_path / "x"), "--format", "ego", "--layout", "frames"]) == 2
    assert "--layout frames: expected one of ('egovlp', 'avion')" in capsys.readouterr().err
