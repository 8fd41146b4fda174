"""Grain pipelines on a prepared SynthKitchens: determinism, restore, sharding, positives, TTA."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from tempret_jax import relevance
from tempret_jax.data import crops, ek100, pipeline, prepare, synthetic, views
from tiny_run import make_dataset

TINY = synthetic.SynthConfig(num_train_videos=3, num_test_videos=2, num_participants=2,
                             clips_per_video=5, width=128, height=72, fps=20,
                             clip_seconds=(0.8, 1.5), gap_seconds=(0.2, 0.5), gop=10)
T, R = 4, 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    return pathlib.Path(make_dataset(tmp_path_factory, TINY, num_frames=8, short_side=48))


def _train(dataset, batch=4, **kw):
    kw = {"num_frames": T, "resolution": R, "process_index": 0, "process_count": 1, **kw}
    return pipeline.train_pipeline(dataset, batch, **kw)


def _take(iterator, n):
    return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batch_shapes_and_device_crops(dataset):
    batch = next(iter(_train(dataset)))
    c = crops.canvas_size(48, R)  # the data set's short side
    assert batch["frames"].shape == (4, T, c, c, 3) and batch["frames"].dtype == np.uint8
    assert batch["crop_box"].shape == (4, 4) and batch["crop_box"].dtype == np.float32
    assert batch["crop_window"].shape == (4, 2) and batch["crop_window"].dtype == np.int32
    assert batch["tokens"].shape == (4, 77) and batch["tokens"].dtype == np.int32
    assert batch["clip_nouns"].shape == batch["text_nouns"].shape == (4, ek100.NUM_NOUN_CLASSES)
    assert batch["clip_verb"].dtype == batch["text_verb"].dtype == np.int32
    left, top, right, bottom = batch["crop_box"].T
    width, height = batch["crop_window"].T
    assert np.all((0 <= left) & (left < right) & (right <= width) & (width <= c))
    assert np.all((0 <= top) & (top < bottom) & (bottom <= height) & (height <= c))
    # Outside its window a canvas is 0; the box covers 50-100 % of a 85 x 48 frame.
    for frames, (w, h) in zip(batch["frames"], batch["crop_window"]):
        assert not frames[:, h:].any() and not frames[:, :, w:].any()
    area = (right - left) * (bottom - top) / (85 * 48)
    assert np.all((area > 0.5 - 1e-3) & (area < 1 + 1e-3))
    video = np.asarray(crops.resized_crops(batch["frames"], batch["crop_box"],
                                           batch["crop_window"], R))
    assert video.shape == (4, T, R, R, 3) and video.dtype == np.float32
    # CLIP normalisation maps [0, 255] to about [-1.8, 2.2].
    lo = (0 - np.array(pipeline.CLIP_MEAN)) / np.array(pipeline.CLIP_STD)
    hi = (1 - np.array(pipeline.CLIP_MEAN)) / np.array(pipeline.CLIP_STD)
    assert np.all(video >= lo - 1e-5) and np.all(video <= hi + 1e-5)


def test_train_stream_is_a_function_of_the_seed(dataset):
    a = _take(iter(_train(dataset, seed=3)), 3)
    _assert_same(a, _take(iter(_train(dataset, seed=3)), 3))
    b = _take(iter(_train(dataset, seed=4)), 3)
    assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, b))


def test_restored_iterator_yields_the_same_next_batches(dataset):
    it = iter(_train(dataset))
    _take(it, 5)  # past the first epoch of 15 clips
    state = it.get_state()
    expected = _take(it, 3)
    restored = iter(_train(dataset))
    restored.set_state(state)
    _assert_same(expected, _take(restored, 3))


def test_worker_processes_give_the_same_stream_and_restore(dataset):
    expected = _take(iter(_train(dataset)), 4)
    it = iter(_train(dataset, num_workers=1))
    _assert_same(expected[:2], _take(it, 2))
    state = it.get_state()
    it.close()
    restored = iter(_train(dataset, num_workers=1))
    restored.set_state(state)
    _assert_same(expected[2:], _take(restored, 2))
    restored.close()


def test_process_shards_are_disjoint_and_cover_an_epoch(dataset):
    n = len(pipeline.open_split(dataset, "train"))  # 15: shards of 8 and 7
    seen = []
    for p in range(2):
        it = iter(_train(dataset, batch=2, process_index=p, process_count=2))
        local = len(range(p, n, 2))
        epoch = np.concatenate([b["index"] for b in _take(it, local)])
        assert len(set(epoch)) == local  # one epoch visits each of its records once
        seen.append(set(epoch))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))


def test_held_out_records_are_never_drawn_and_the_rest_are_each_epoch(dataset):
    n = len(pipeline.open_split(dataset, "train"))
    held = pipeline.holdout_records(n, 4, seed=3)
    assert len(set(held)) == 4 and list(held) == sorted(held)
    np.testing.assert_array_equal(held, pipeline.holdout_records(n, 4, seed=3))  # reproducible
    assert not np.array_equal(held, pipeline.holdout_records(n, 4, seed=4))
    it = iter(_train(dataset, batch=1, exclude=held))
    two_epochs = np.concatenate([b["index"] for b in _take(it, 2 * (n - 4))])
    assert set(two_epochs) == set(range(n)) - set(held)
    assert np.bincount(two_epochs, minlength=n)[held].sum() == 0


def test_a_holdout_must_leave_training_clips(dataset):
    n = len(pipeline.open_split(dataset, "train"))
    with pytest.raises(ValueError, match=f"data.holdout_clips: expected 0 <= clips < {n}"):
        pipeline.holdout_records(n, n, seed=0)


def test_positive_sampling_returns_relevant_sentences_with_their_relevance(dataset):
    clips, sentences = prepare.load_annotations(dataset, "train")
    tokens = pipeline.tokenize(sentences.narration)
    by_tokens = {t.tobytes(): i for i, t in enumerate(tokens)}
    labels = sentences.labels()
    source = pipeline.open_split(dataset, "train")
    it = iter(_train(dataset, batch=5))
    for batch in _take(it, 12):
        for i in range(5):
            record = source[int(batch["index"][i])]
            row = int(record["clip_index"])
            assert batch["clip_verb"][i] == clips.verb_class[row]
            assert set(np.flatnonzero(batch["clip_nouns"][i])) == set(clips.noun_classes[row])
            j = by_tokens[batch["tokens"][i].tobytes()]  # the sampled sentence
            assert batch["text_verb"][i] == labels.verb[j]
            np.testing.assert_array_equal(batch["text_nouns"][i], labels.nouns[j])
            rel = ek100.pair_relevance(clips.labels().take([row]), labels.take([j]))[0]
            assert rel > relevance.POSITIVE_THRESHOLD
            assert batch["pos_relevance"][i] == pytest.approx(rel)


def test_positive_sampling_falls_back_to_the_own_narration(dataset):
    clips, sentences = prepare.load_annotations(dataset, "train")
    # Sentences whose classes match no clip: no clip has a positive any more.
    unrelated = ek100.ClassLabels.from_lists(np.full(len(sentences), 96),
                                             [(299,)] * len(sentences))
    relevance = ek100.TrainRelevance(clips.labels(), unrelated)
    source = pipeline.open_split(dataset, "train")
    batch = next(iter(_train(dataset, relevance=relevance)))
    for i, index in enumerate(batch["index"]):
        record = source[int(index)]
        own = pipeline.tokenize([record["narration"].decode()])[0]
        np.testing.assert_array_equal(batch["tokens"][i], own)
        assert batch["pos_relevance"][i] == 1
        assert batch["text_verb"][i] == batch["clip_verb"][i]
        np.testing.assert_array_equal(batch["text_nouns"][i], batch["clip_nouns"][i])


def test_segment_sampling():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = pipeline.segment_indices(32, 16, rng)
        assert np.all(idx // 2 == np.arange(16))  # one frame in each segment of 2
    np.testing.assert_array_equal(pipeline.segment_indices(8, 4), [1, 3, 5, 7])
    np.testing.assert_array_equal(pipeline.segment_indices(2, 4), [0, 0, 1, 1])


def test_eval_covers_every_clip_once_in_order_with_a_padding_mask(dataset):
    source = pipeline.open_split(dataset, "test")
    n = len(source)  # 10
    batches = list(pipeline.eval_pipeline(dataset, 4, num_frames=T, resolution=R,
                                          process_index=0, process_count=1))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, np.arange(12) < n)
    ids = np.concatenate([b["narration_id"] for b in batches])[:n]
    np.testing.assert_array_equal(ids, [source[i]["narration_id"].decode() for i in range(n)])
    assert batches[-1]["video"].shape == (4, 1, T, R, R, 3)
    assert np.all(batches[-1]["video"][~batches[-1]["mask"]] == 0)


def test_eval_shards_have_equal_length_and_cover_the_split(dataset):
    n = len(pipeline.open_split(dataset, "test"))
    shards = [list(pipeline.eval_pipeline(dataset, 4, num_frames=T, resolution=R,
                                          process_index=p, process_count=2)) for p in range(2)]
    assert len(shards[0]) == len(shards[1])  # every process runs the same number of steps
    got = [np.concatenate([b["index"][b["mask"]] for b in s]) for s in shards]
    assert sorted(np.concatenate(got)) == list(range(n))


def test_tta_views_shapes_flip_and_scale(dataset):
    batch = next(iter(pipeline.eval_pipeline(dataset, 2, num_frames=T, resolution=R,
                                             views=views.TTA_VIEWS, process_index=0,
                                             process_count=1)))
    video = batch["video"]
    assert video.shape == (2, 5, T, R, R, 3)
    plain, flipped, small, same, large = (video[:, v] for v in range(5))
    np.testing.assert_array_equal(flipped, plain[:, :, :, ::-1])  # mirrors left and right
    assert not np.array_equal(flipped, plain)
    np.testing.assert_array_equal(same, plain)  # 1.0x is the original
    # Scale 0.875: the 32 x 32 crop becomes 28 x 28, padded with the mean (0 after normalising)
    # on every side.
    for border in (small[:, :, :2], small[:, :, -2:], small[:, :, :, :2], small[:, :, :, -2:]):
        np.testing.assert_allclose(border, 0, atol=0.01)
    assert np.abs(large[:, :, :2]).mean() > 0.1 and not np.array_equal(large, plain)


def test_sentences_once_tokenised(dataset):
    _, sentences = prepare.load_annotations(dataset, "test")
    batches = list(pipeline.sentence_pipeline(dataset, 8, process_index=0, process_count=1))
    mask = np.concatenate([b["mask"] for b in batches])
    tokens = np.concatenate([b["tokens"] for b in batches])[mask]
    np.testing.assert_array_equal(tokens, pipeline.tokenize(sentences.narration))
    ids = np.concatenate([b["narration_id"] for b in batches])[mask]
    np.testing.assert_array_equal(ids, sentences.narration_id)
    assert len(mask) == -(-len(sentences) // 8) * 8


def test_batch_size_must_divide_between_processes(dataset):
    with pytest.raises(ValueError, match="not divisible"):
        _train(dataset, batch=5, process_index=0, process_count=2)


def test_sentences_are_tokenised_once_as_tokenize_does(dataset):
    clips, sentences = prepare.load_annotations(dataset, "train")
    transform = pipeline.TrainTransform(ek100.TrainRelevance.from_tables(clips, sentences),
                                        sentences, T, R, short_side=48)
    assert transform.sentence_tokens.shape == (len(sentences), pipeline.CONTEXT_LENGTH)
    for i, text in enumerate(sentences.narration):
        np.testing.assert_array_equal(transform.sentence_tokens[i], pipeline.tokenize([text])[0])


def test_normalize_into_out_equals_the_formula():
    pixels = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    expected = (pixels / 255 - np.array(pipeline.CLIP_MEAN)) / np.array(pipeline.CLIP_STD)
    normalize = pipeline.Normalize()
    np.testing.assert_allclose(normalize(pixels), expected, rtol=1e-6, atol=1e-6)
    out = np.full(pixels.shape, np.nan, np.float32)
    assert normalize(pixels[:, :, ::-1], out=out) is out  # a mirrored (strided) view as input
    np.testing.assert_allclose(out, expected[:, :, ::-1], rtol=1e-6, atol=1e-6)
    half = pipeline.Normalize(np.float16)(pixels)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, expected, rtol=1e-3, atol=2e-3)


def test_cut_crops_use_one_box_for_every_frame():
    rng = np.random.default_rng(1)
    frames = list(rng.integers(0, 256, (3, 40, 60, 3), dtype=np.uint8))
    canvas = crops.canvas_size(40, 16)
    clip = pipeline.cut_crops(iter(frames), 3, np.random.default_rng(7), 16, (0.5, 1.0), canvas)
    box = crops.random_resized_crop_box(60, 40, np.random.default_rng(7), (0.5, 1.0))
    video = crops.resized_crops(clip["frames"][None], clip["crop_box"][None],
                                clip["crop_window"][None], 16)[0]
    pixels = (np.asarray(video) * pipeline.CLIP_STD + pipeline.CLIP_MEAN) * 255
    for got, frame in zip(pixels, frames):
        expected = np.asarray(Image.fromarray(frame).resize((16, 16), Image.BILINEAR, box=box),
                              np.float64)
        assert np.abs(got - expected).max() <= 1 + 1e-3
    for count in (2, 4):
        with pytest.raises(ValueError, match="expected num_frames=3"):
            pipeline.cut_crops((frames * 2)[:count], 3, rng, 16, (0.5, 1.0), canvas)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_decode_jpeg_gives_pils_pixels_as_an_rgb_array(mode):
    import io
    rng = np.random.default_rng(2)
    shape = (24, 40, 3) if mode == "RGB" else (24, 40)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="JPEG")
    frame = pipeline.decode_jpeg(buf.getvalue())
    assert frame.shape == (24, 40, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, np.asarray(Image.open(buf).convert("RGB")))


def test_a_corrupt_stored_frame_names_its_record(dataset):
    clips, sentences = prepare.load_annotations(dataset, "train")
    train = pipeline.TrainTransform(ek100.TrainRelevance.from_tables(clips, sentences),
                                    sentences, T, R, short_side=48)
    record = {"clip_index": 0, "frames": [b"not a jpeg"] * 8, "narration_id": b"P01_01_3",
              "narration": b"open the drawer"}
    with pytest.raises(ValueError, match=r"train record 5 \(P01_01_3\)"):
        train.random_map((5, record), np.random.default_rng(0))
    evaluate = pipeline.EvalTransform([record], T, R, (pipeline.View(),), np.float32)
    with pytest.raises(ValueError, match=r"eval record 0 \(P01_01_3\)"):
        evaluate.map(0)
