"""SynthKitchens -> preparation -> TFDS: what is written is what the CSVs and videos say."""

import dataclasses
import csv
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tempret_jax.data import decode, ek100, prepare, synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = synthetic.SynthConfig(num_train_videos=3, num_test_videos=2, num_participants=2,
                             clips_per_video=4, width=128, height=72, fps=20,
                             clip_seconds=(0.8, 1.5), gap_seconds=(0.2, 0.5), gop=10)
FRAMES, SHORT = 6, 64


def _prepare(root, output, **kw) -> dict:
    kw = {"num_workers": 1, **kw}
    config = prepare.PrepareConfig(annotation_dir=str(root / "annotations"), video_root=str(root),
                                   output_dir=str(output), num_frames=FRAMES, short_side=SHORT,
                                   progress=False, **kw)
    return prepare.prepare(config)


def _records(dataset_dir, split):
    source = tfds.builder_from_directory(str(dataset_dir)).as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def _stamps(record) -> list[int]:
    return [synthetic.read_frame_index(np.asarray(Image.open(io.BytesIO(f)))) for f in record["frames"]]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthetic.generate(root, TINY)
    return root


@pytest.fixture(scope="module")
def prepared(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    summary = _prepare(synth, out)
    return pathlib.Path(summary["dataset_dir"]), summary


def test_records_match_csvs_and_come_from_the_clip_span(synth, prepared):
    dataset_dir, summary = prepared
    for split, clips_file in (("train", ek100.TRAIN_CLIPS_FILE), ("test", ek100.TEST_CLIPS_FILE)):
        table = ek100.read_clips(synth / "annotations" / clips_file)
        records = _records(dataset_dir, split)
        assert summary["clips"][split] == len(records) == len(table)
        assert summary["skipped"][split] == 0
        for row, r in enumerate(records):
            assert r["clip_index"] == row
            assert r["narration_id"].decode() == table.narration_id[row]
            assert r["narration"].decode() == table.narration[row]
            assert r["verb_class"] == table.verb_class[row]
            assert tuple(r["noun_classes"]) == table.noun_classes[row]
            assert len(r["frames"]) == FRAMES
            assert min(Image.open(io.BytesIO(r["frames"][0])).size) == SHORT
            # The stamped frame index is the frame shown at each sample time, inside the clip.
            times = decode.sample_times(table.start_timestamp[row], table.stop_timestamp[row], FRAMES)
            np.testing.assert_allclose(r["frame_times"], times, rtol=1e-6)
            stamps = _stamps(r)
            assert stamps == list(np.floor(times * TINY.fps + 1e-6).astype(int))
            assert table.start_timestamp[row] * TINY.fps - 1 <= stamps[0] <= stamps[-1] \
                <= table.stop_timestamp[row] * TINY.fps


def test_relevance_from_records_equals_relevance_from_csvs(synth, prepared):
    dataset_dir, _ = prepared
    rel, clip_ids, sentence_ids = ek100.load_test_relevance(synth / "annotations")
    records = _records(dataset_dir, "test")
    labels = ek100.ClassLabels.from_lists([r["verb_class"] for r in records],
                                          [tuple(r["noun_classes"]) for r in records])
    clips, sentences = prepare.load_annotations(dataset_dir, "test")
    np.testing.assert_array_equal([r["narration_id"].decode() for r in records], clip_ids)
    np.testing.assert_array_equal(ek100.relevance(labels, sentences.labels(clips)), rel)
    assert rel.max() == 1 and 0 < rel.mean() < 1  # graded, as in EK-100


@pytest.mark.parametrize("layout", ["chunked", "frames"])
def test_other_layouts_give_the_same_frames(tmp_path, layout):
    config = synthetic.SynthConfig(**{**TINY.__dict__, "num_train_videos": 1, "num_test_videos": 1,
                                      "layout": layout, "chunk_seconds": 2})
    synthetic.generate(tmp_path / "src", config)
    if layout == "chunked":  # several chunks per video
        assert len(list((tmp_path / "src" / "P01" / "videos" / "P01_01.MP4").iterdir())) > 2
    summary = _prepare(tmp_path / "src", tmp_path / "out", chunk_seconds=2)
    table = ek100.read_clips(tmp_path / "src" / "annotations" / ek100.TRAIN_CLIPS_FILE)
    records = _records(summary["dataset_dir"], "train")
    assert len(records) == len(table) == TINY.clips_per_video
    for row, r in enumerate(records):
        if layout == "frames":  # 1-based file numbers; the stamp is the 0-based index
            expected = decode.sample_frame_numbers(table.start_frame[row], table.stop_frame[row],
                                                    FRAMES) - 1
        else:
            times = decode.sample_times(table.start_timestamp[row], table.stop_timestamp[row], FRAMES)
            expected = np.floor(times * TINY.fps + 1e-6).astype(int)
        assert _stamps(r) == list(expected)


def test_decode_at_reads_across_chunks_whatever_the_seek_gap(tmp_path):
    config = synthetic.SynthConfig(**{**TINY.__dict__, "num_train_videos": 1, "num_test_videos": 0,
                                      "layout": "chunked", "chunk_seconds": 2})
    synthetic.generate(tmp_path, config)
    kind, folder = decode.find_source(tmp_path, "P01", "P01_01")
    assert kind == "chunked"
    # Times in several chunks, out of order, with gaps longer and shorter than a seek.
    times = np.array([[5.07, 0.0, 1.98], [2.02, 3.5, 0.52]])
    expected = list(np.floor(times.ravel() * TINY.fps + 1e-6).astype(int))
    for gap in (0.0, 2.0, 100.0):
        images = decode.decode_at(kind, folder, times, chunk_seconds=2, seek_gap=gap)
        assert [synthetic.read_frame_index(np.asarray(img)) for img in images] == expected
        arrays = decode.decode_at(kind, folder, times, chunk_seconds=2, seek_gap=gap,
                                   as_array=True)
        for img, array in zip(images, arrays):
            assert array.dtype == np.uint8
            np.testing.assert_array_equal(array, np.asarray(img))
    (folder / "2.MP4").unlink()  # frames of a missing chunk are None
    images = decode.decode_at(kind, folder, [1.0, 2.5, 4.5], chunk_seconds=2)
    assert images[1] is None and images[0] is not None and images[2] is not None


def _cli(synth, output, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return [sys.executable, str(REPO / "tools" / "prepare_ek100.py"), "--annotations",
            str(synth / "annotations"), "--videos", str(synth), "--output", str(output),
            "--num_frames", str(FRAMES), "--short_side", str(SHORT), *extra], env


def test_killed_preparation_resumes_to_the_same_result(synth, prepared, tmp_path):
    out = tmp_path / "out"
    cmd, env = _cli(synth, out, "--workers", "1", "--no_progress")
    shards = out / "work" / "shards"
    n_videos = TINY.num_train_videos + TINY.num_test_videos
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not list(shards.glob("*/*.npz")):
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = list(shards.glob("*/*.npz"))
    assert 0 < len(done) < n_videos, "the kill should land mid-way"
    assert not list(out.glob("ek100_mir/*/*/dataset_info.json"))

    mtimes = {p: p.stat().st_mtime_ns for p in done}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    dataset_dir, _ = prepared
    resumed = prepare.dataset_dir(out, FRAMES, SHORT)
    for split in ("train", "test"):
        a, b = _records(dataset_dir, split), _records(resumed, split)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
    # The shards written before the kill were reused, not redone.
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


def _broken_copy(synth, dst) -> dict[str, tuple[str, str]]:
    """A copy of the synthetic set with a corrupt test video, a missing train video and a train
    clip past the end of its video; returns {narration_id: (split, expected reason fragment)}."""
    shutil.copytree(synth, dst)
    test = ek100.read_clips(dst / "annotations" / ek100.TEST_CLIPS_FILE)
    train = ek100.read_clips(dst / "annotations" / ek100.TRAIN_CLIPS_FILE)
    corrupt, missing = test.video_id[0], train.video_id[-1]
    (dst / corrupt[:3] / "videos" / f"{corrupt}.MP4").write_bytes(b"not a video" * 100)
    (dst / missing[:3] / "videos" / f"{missing}.MP4").unlink()
    path = dst / "annotations" / ek100.TRAIN_CLIPS_FILE
    rows = list(csv.reader(open(path, newline="")))
    late = rows[1][:]
    late[0], late[4], late[5] = f"{late[2]}_late", "00:09:00.00", "00:09:02.00"
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(late)
    expected = {late[0]: ("train", "outside the video")}
    expected.update({nid: ("test", "cannot decode")
                     for nid, v in zip(test.narration_id, test.video_id) if v == corrupt})
    expected.update({nid: ("train", "missing video")
                     for nid, v in zip(train.narration_id, train.video_id) if v == missing})
    return expected


def test_bad_videos_and_clips_are_reported_and_skipped(synth, tmp_path):
    expected = _broken_copy(synth, tmp_path / "src")
    summary = _prepare(tmp_path / "src", tmp_path / "out", num_workers=2,  # a process pool
                       allow_skipped=True)
    with open(summary["report"], newline="") as f:
        report = {r["narration_id"]: (r["split"], r["reason"]) for r in csv.DictReader(f)}
    assert report.keys() == expected.keys()
    for nid, (split, fragment) in expected.items():
        assert report[nid][0] == split and fragment in report[nid][1], report[nid]
    skipped = {s: sum(v[0] == s for v in expected.values()) for s in ("train", "test")}
    assert summary["skipped"] == skipped
    per_video = TINY.clips_per_video
    assert summary["clips"] == {"train": TINY.num_train_videos * per_video + 1 - skipped["train"],
                                "test": TINY.num_test_videos * per_video - skipped["test"]}
    for split in ("train", "test"):
        written = {r["narration_id"].decode() for r in _records(summary["dataset_dir"], split)}
        assert len(written) == summary["clips"][split] and not written & expected.keys()


def test_strict_fails_with_the_reason(synth, tmp_path):
    _broken_copy(synth, tmp_path / "src")
    with pytest.raises(prepare.PrepareError, match="outside the video|cannot decode|missing video"):
        _prepare(tmp_path / "src", tmp_path / "out", strict=True)
    cmd, env = _cli(tmp_path / "src", tmp_path / "out2", "--workers", "1", "--strict",
                    "--no_progress")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "error:" in result.stderr


def test_missing_frames_folder_and_frames_are_reported(tmp_path):
    config = synthetic.SynthConfig(**{**TINY.__dict__, "num_train_videos": 2, "num_test_videos": 0,
                                      "layout": "frames"})
    root = tmp_path / "src"
    synthetic.generate(root, config)
    shutil.rmtree(root / "P02" / "rgb_frames" / "P02_01")
    table = ek100.read_clips(root / "annotations" / ek100.TRAIN_CLIPS_FILE)
    last = TINY.clips_per_video - 1  # the last clip of P01_01 loses its frames
    for n in range(table.start_frame[last], table.stop_frame[last] + 1):
        (root / "P01" / "rgb_frames" / "P01_01" / f"frame_{n:010d}.jpg").unlink()
    summary = _prepare(root, tmp_path / "out", splits=("train",), allow_skipped=True)
    with open(summary["report"], newline="") as f:
        report = {r["narration_id"]: r["reason"] for r in csv.DictReader(f)}
    assert all("missing video" in report[f"P02_01_{k}"] for k in range(TINY.clips_per_video))
    assert "missing" in report[f"P01_01_{TINY.clips_per_video - 1}"]
    assert summary["clips"]["train"] == TINY.clips_per_video - 1


def test_full_size_train_csv_has_real_class_statistics(ek100_dir, tmp_path):
    path = tmp_path / "train.csv"
    synthetic.synthesize_train_csv(path, ek100_dir / ek100.TRAIN_SENTENCES_FILE, num_clips=3000)
    clips = ek100.read_clips(path)
    sentences = ek100.read_sentences(ek100_dir / ek100.TRAIN_SENTENCES_FILE)
    assert len(clips) == 3000
    # Every clip's (verb, nouns, narration) is a real train sentence's.
    real = {(n, v, c) for n, v, c in zip(sentences.narration, sentences.verb_class,
                                          sentences.noun_classes)}
    assert all((n, v, c) in real for n, v, c in zip(clips.narration, clips.verb_class,
                                                     clips.noun_classes))
    relevance = ek100.TrainRelevance.from_tables(clips, sentences)
    assert all(relevance.num_positives(i) > 0 for i in range(0, 3000, 97))


def test_skipped_clips_fail_the_preparation_unless_allowed(tmp_path):
    # The accident: AVION chunk folders prepared with the wrong --chunk_seconds lose clips.
    config = synthetic.SynthConfig(**{**TINY.__dict__, "num_train_videos": 1, "num_test_videos": 1,
                                      "layout": "chunked", "chunk_seconds": 2})
    synthetic.generate(tmp_path / "src", config)
    with pytest.raises(prepare.SkippedClipsError, match=r"\d+ clip\(s\) skipped, the reasons in "
                       + str(tmp_path / "out" / prepare.REPORT_FILE).replace(".", r"\.")):
        _prepare(tmp_path / "src", tmp_path / "out", chunk_seconds=3)
    summary = json.loads((tmp_path / "out" / prepare.SUMMARY_FILE).read_text())
    assert summary["dataset_dir"] is None and sum(summary["skipped"].values()) > 0
    assert not list((tmp_path / "out").glob("ek100_mir/*/*/dataset_info.json"))

    cmd, env = _cli(tmp_path / "src", tmp_path / "out", "--workers", "1", "--no_progress",
                    "--chunk_seconds", "3")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    skipped = sum(summary["skipped"].values())
    assert result.returncode == 1
    assert f"{skipped} clip(s) skipped" in result.stderr
    assert str(tmp_path / "out" / prepare.REPORT_FILE) in result.stderr
    result = subprocess.run(cmd + ["--allow_skipped"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / prepare.SUMMARY_FILE).read_text())
    assert sum(summary["skipped"].values()) == skipped
    assert len(_records(summary["dataset_dir"], "train")) == summary["clips"]["train"] > 0


def test_a_damaged_frame_file_skips_its_clip_and_no_other(tmp_path):
    # Frames already at the stored size were stored without being decoded: a truncated one
    # became a record that fails in training.
    config = synthetic.SynthConfig(**{**TINY.__dict__, "num_train_videos": 1, "num_test_videos": 0,
                                      "layout": "frames", "height": SHORT})
    root = tmp_path / "src"
    synthetic.generate(root, config)
    table = ek100.read_clips(root / "annotations" / ek100.TRAIN_CLIPS_FILE)
    damaged = decode.sample_frame_numbers(table.start_frame[1], table.stop_frame[1], FRAMES)[2]
    frame = root / "P01" / "rgb_frames" / "P01_01" / f"frame_{damaged:010d}.jpg"
    frame.write_bytes(frame.read_bytes()[:len(frame.read_bytes()) // 2])
    summary = _prepare(root, tmp_path / "out", splits=("train",), allow_skipped=True)
    with open(summary["report"], newline="") as f:
        report = {r["narration_id"]: r["reason"] for r in csv.DictReader(f)}
    assert report.keys() == {table.narration_id[1]}
    assert f"cannot read {frame}" in report[table.narration_id[1]]
    records = _records(summary["dataset_dir"], "train")
    assert [r["narration_id"].decode() for r in records] == [
        nid for nid in table.narration_id if nid != table.narration_id[1]]
    for r in records:
        assert [min(Image.open(io.BytesIO(f)).size) for f in r["frames"]] == [SHORT] * FRAMES


def _damage_a_packet(video: pathlib.Path, clip_times: np.ndarray) -> tuple[float, float, float]:
    """Overwrites the NAL length of the packet of a non-key frame that a clip samples, so that the
    decoder fails on it (InvalidDataError). Returns (its time, the start of the keyframe interval
    before the one holding it, the end of that one): frames outside [start, end) decode."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        packets = [(float(p.pts * p.time_base), p.pos, p.is_keyframe)
                   for p in container.demux(stream) if p.size]
    keys = sorted(t for t, _, key in packets if key)
    frame_times = {round(t * TINY.fps): (t, pos, key) for t, pos, key in packets}
    # A frame a few frames into its interval, so that B-frame reordering stays inside it.
    for t in np.floor(clip_times.ravel() * TINY.fps + 1e-6):
        time, pos, key = frame_times[int(t)]
        start = max(k for k in keys if k <= time)
        if not key and time - start >= 4 / TINY.fps and any(k > time for k in keys):
            data = bytearray(video.read_bytes())
            data[pos:pos + 4] = b"\xff" * 4
            video.write_bytes(bytes(data))
            before = max([k for k in keys if k < start], default=0.0)
            return time, before, min(k for k in keys if k > time)
    raise AssertionError("no clip samples a frame the test can damage")


def test_a_damaged_packet_skips_only_the_clips_that_need_it(tmp_path):
    # One bad packet used to skip every clip of the video (SkipVideo).
    config = synthetic.SynthConfig(**{**TINY.__dict__, "num_train_videos": 1, "num_test_videos": 0,
                                      "clips_per_video": 8})
    root = tmp_path / "src"
    synthetic.generate(root, config)
    table = ek100.read_clips(root / "annotations" / ek100.TRAIN_CLIPS_FILE)
    times = np.stack([decode.sample_times(a, b, FRAMES)
                      for a, b in zip(table.start_timestamp, table.stop_timestamp)])
    video = root / "P01" / "videos" / "P01_01.MP4"
    damaged, start, end = _damage_a_packet(video, times[2:-2])
    summary = _prepare(root, tmp_path / "out", splits=("train",), allow_skipped=True)
    with open(summary["report"], newline="") as f:
        report = {r["narration_id"]: r["reason"] for r in csv.DictReader(f)}
    needs_it = {nid for nid, t in zip(table.narration_id, times) if np.any(np.abs(t - damaged) < 0.1)}
    near = {nid for nid, t in zip(table.narration_id, times) if np.any((t >= start) & (t < end))}
    assert needs_it and needs_it <= report.keys() <= near
    assert all(f"cannot decode {video} at " in report[nid] for nid in report)
    records = {r["narration_id"].decode(): r for r in _records(summary["dataset_dir"], "train")}
    assert records.keys() == set(table.narration_id) - report.keys()
    assert set(table.narration_id) - near <= records.keys() and len(records) >= 4
    for row, nid in enumerate(table.narration_id):
        if nid in records:
            assert _stamps(records[nid]) == list(np.floor(times[row] * TINY.fps + 1e-6).astype(int))


def test_decoding_resumes_past_a_damaged_packet(tmp_path):
    config = synthetic.SynthConfig(**{**TINY.__dict__, "num_train_videos": 1, "num_test_videos": 0,
                                      "clips_per_video": 8})
    synthetic.generate(tmp_path, config)
    video = tmp_path / "P01" / "videos" / "P01_01.MP4"
    damaged, before, after = _damage_a_packet(video, np.arange(2.0, 8.0, 0.05))
    # One run of times through the damage (a long seek gap): the times after it still decode,
    # and of those that need the damaged frames only they are lost.
    for times, lost in (([before, after + 0.01], set()), ([before, damaged, after + 0.01], {1})):
        errors = {}
        images = decode.decode_video_at(video, times, seek_gap=100.0, errors=errors)
        assert errors.keys() == lost and all("InvalidDataError" in e for e in errors.values())
        assert [images[i] is None for i in range(len(times))] == [i in lost for i in range(len(times))]
        assert [synthetic.read_frame_index(np.asarray(img)) for img in images if img is not None] \
            == [int(np.floor(t * TINY.fps + 1e-6)) for i, t in enumerate(times) if i not in lost]
    with pytest.raises(av.InvalidDataError):  # without ``errors`` the error is raised
        decode.decode_video_at(video, times, seek_gap=100.0)


def test_a_quiet_preparation_prints_no_progress_bars_of_tfds(tmp_path, capfd):
    synthetic.generate(tmp_path / "src", dataclasses.replace(TINY, num_train_videos=1,
                                                             num_test_videos=1))
    _prepare(tmp_path / "src", tmp_path / "out")
    err = capfd.readouterr().err
    assert "Generating" not in err and "Shuffling" not in err, err[-500:]


def test_a_preparations_output_folder_names_the_one_data_set_in_it(tmp_path):
    one = prepare.dataset_dir(tmp_path / "out", num_frames=32, short_side=256)
    (one / prepare.ANNOTATIONS).mkdir(parents=True)
    assert prepare.find_dataset(tmp_path / "out") == str(one)
    assert prepare.find_dataset(one) == str(one)  # a data set itself
    assert prepare.find_dataset(tmp_path / "empty") == str(tmp_path / "empty")  # left to fail
    other = prepare.dataset_dir(tmp_path / "out", num_frames=16, short_side=256)
    (other / prepare.ANNOTATIONS).mkdir(parents=True)
    with pytest.raises(prepare.PrepareError, match=r"holds 2 prepared data sets \(ek100_mir/"
                                                   r"frames16_short256/1.0.0, ek100_mir/"
                                                   r"frames32_short256/1.0.0\); give one"):
        prepare.find_dataset(tmp_path / "out")
