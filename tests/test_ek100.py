"""EK-100 annotation reading, validation and relevance (docs/design.md, Relevance), on the real
files."""

import csv

import numpy as np
import pytest

from tempret_jax.data import ek100


@pytest.fixture(scope="module")
def test_split(ek100_dir):
    clips = ek100.read_clips(ek100_dir / ek100.TEST_CLIPS_FILE)
    sentences = ek100.read_sentences(ek100_dir / ek100.TEST_SENTENCES_FILE)
    return clips, sentences


def _rel_between(clips, i, j):
    labels = clips.labels()
    return float(ek100.relevance(labels.take([i]), labels.take([j]))[0, 0])


def _find(clips, verb, nouns):
    """Index of the first clip with this verb class and exactly these noun classes."""
    for i, (v, ns) in enumerate(zip(clips.verb_class, clips.noun_classes)):
        if v == verb and set(ns) == set(nouns):
            return i
    raise LookupError((verb, nouns))


def test_tables_have_the_real_sizes_and_types(test_split, ek100_dir):
    clips, sentences = test_split
    assert len(clips) == 9668 and len(sentences) == 3842
    assert clips.narration_id[0] == "P01_11_0" and clips.narration[0] == "take plate"
    assert clips.start_timestamp[1] == pytest.approx(1.56)
    assert clips.stop_timestamp[1] == pytest.approx(2.45)
    assert clips.verb_class.dtype == np.int32 and clips.noun_classes[0] == (2,)
    train = ek100.read_sentences(ek100_dir / ek100.TRAIN_SENTENCES_FILE)
    assert len(train) == 15989 and train.has_classes and not sentences.has_classes
    assert train.noun_classes[5] == (13, 3) and train.nouns[5] == ("cup", "cupboard")


def test_hand_checked_relevance_pairs(test_split):
    clips, _ = test_split
    take_plate = 0  # P01_11_0: take (0), plate [2]
    put_plate = 1  # P01_11_1: put-down (1), plate [2]
    assert (clips.verb_class[take_plate], clips.noun_classes[take_plate]) == (0, (2,))
    assert (clips.verb_class[put_plate], clips.noun_classes[put_plate]) == (1, (2,))
    assert _rel_between(clips, take_plate, take_plate) == 1.0  # same verb, same nouns
    assert _rel_between(clips, take_plate, put_plate) == 0.5  # other verb, same nouns
    take_other = _find(clips, 0, (clips.noun_classes[_find_other_noun(clips)][0],))
    assert _rel_between(clips, take_plate, take_other) == 0.5  # same verb, disjoint nouns
    put_cup_cupboard = _find(clips, 1, (13, 3))  # put-down, cup + cupboard
    put_cup = _find(clips, 1, (13,))
    take_cup = _find(clips, 0, (13,))
    assert _rel_between(clips, put_cup, put_cup_cupboard) == 0.75  # IoU 1/2, same verb
    assert _rel_between(clips, take_cup, put_cup_cupboard) == 0.25  # IoU 1/2, other verb


def _find_other_noun(clips):
    """A 'take' clip with a single noun other than plate."""
    for i, (v, ns) in enumerate(zip(clips.verb_class, clips.noun_classes)):
        if v == 0 and len(ns) == 1 and ns[0] != 2:
            return i
    raise LookupError


def test_noun_lists_are_sets():
    a = ek100.ClassLabels.from_lists([5], [(10, 10)])
    b = ek100.ClassLabels.from_lists([5], [(10,)])
    assert ek100.relevance(a, b)[0, 0] == 1.0


def test_relevance_is_symmetric_and_takes_the_expected_values(test_split):
    clips, _ = test_split
    labels = clips.labels().take(slice(0, 600))
    rel = ek100.relevance(labels, labels)
    np.testing.assert_array_equal(rel, rel.T)
    assert np.all(np.diag(rel) == 1)
    # 0.5 * [same verb] + 0.5 * |A & B| / |A | B| with |A|, |B| <= 4.
    ious = {i / u for u in range(1, 9) for i in range(0, u + 1)}
    allowed = np.array(sorted({np.float32(0.5 * v + 0.5 * x) for v in (0, 1) for x in ious}))
    assert np.isin(rel, allowed).all()


def test_load_test_relevance(ek100_dir, test_split):
    clips, sentences = test_split
    rel, clip_ids, sentence_ids = ek100.load_test_relevance(ek100_dir)
    assert rel.shape == (9668, 3842) and rel.dtype == np.float32
    np.testing.assert_array_equal(clip_ids, clips.narration_id)
    np.testing.assert_array_equal(sentence_ids, sentences.narration_id)
    # A sentence has its representative clip's classes: that clip is a hit.
    index = clips.index()
    rows = [index[s] for s in sentence_ids]
    assert np.all(rel[rows, np.arange(len(rows))] == 1)
    dense = ek100.relevance(clips.labels(), sentences.labels(clips))
    np.testing.assert_array_equal(rel, dense)


def test_train_relevance_matches_dense_relevance(test_split, ek100_dir):
    clips, _ = test_split
    sentences = ek100.read_sentences(ek100_dir / ek100.TRAIN_SENTENCES_FILE)
    clips = ek100.ClipTable(**{**clips.__dict__})  # the test clips stand in for train clips
    train = ek100.TrainRelevance.from_tables(clips, sentences)
    dense_rows = np.arange(0, len(clips), 301)
    dense = ek100.relevance(clips.labels().take(dense_rows), sentences.labels())
    rng = np.random.default_rng(0)
    for row, i in enumerate(dense_rows):
        expected = np.flatnonzero(dense[row] > 0.1)
        np.testing.assert_array_equal(train.positives(i), expected)
        assert train.num_positives(i) == len(expected)
        for _ in range(5):
            j, r = train.sample_positive(i, rng)
            assert j in expected and r == dense[row, j]
        cols = rng.integers(0, len(sentences), 50)
        np.testing.assert_array_equal(train(np.full(50, i), cols), dense[row, cols])


def test_positive_sampling_is_uniform_over_sentences():
    # Clip key (verb 0, {1}); sentences: two with that key, one with (verb 0, {2}) -> rel 0.5,
    # one with (verb 3, {4}) -> rel 0. Uniform over the 3 positive sentences, not over keys.
    clips = ek100.ClassLabels.from_lists([0], [(1,)])
    sentences = ek100.ClassLabels.from_lists([0, 0, 0, 3], [(1,), (2,), (1,), (4,)])
    train = ek100.TrainRelevance(clips, sentences)
    rng = np.random.default_rng(0)
    draws = [train.sample_positive(0, rng)[0] for _ in range(3000)]
    counts = np.bincount(draws, minlength=4)
    assert counts[3] == 0 and np.all(np.abs(counts[:3] / 3000 - 1 / 3) < 0.04)


def test_positive_sampling_falls_back_to_the_own_narration():
    clips = ek100.ClassLabels.from_lists([0], [(1,)])
    sentences = ek100.ClassLabels.from_lists([3], [(4,)])
    train = ek100.TrainRelevance(clips, sentences)
    assert train.sample_positive(0, np.random.default_rng(0)) == (-1, 1.0)
    assert train.num_positives(0) == 0 and len(train.positives(0)) == 0


# ---------------------------------------------------------------------------------------------
# Validation: every problem names file, line and what was expected.


def _write_clips(path, ek100_dir, edit=None, n=5):
    """Copies the header and first n rows of the real test CSV, applying edit(rows)."""
    with open(ek100_dir / ek100.TEST_CLIPS_FILE, newline="") as f:
        rows = list(csv.reader(f))[: n + 1]
    if edit:
        edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def _set(row_index, column, value):
    def edit(rows):
        rows[row_index][rows[0].index(column)] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda rows: [r.pop(10) for r in rows], r":1: missing column\(s\) verb_class"),
    (_set(3, "start_timestamp", "00:01"), r":4: start_timestamp '00:01' is not a timestamp"),
    (_set(2, "stop_timestamp", "00:00:00.50"), r":3: start_timestamp 00:00:01.56 is not before"),
    (_set(2, "stop_frame", "90"), r":3: start_frame 93 is not before stop_frame 90"),
    (_set(4, "all_noun_classes", "[2, oops"), r":5: all_noun_classes '\[2, oops' is not a list"),
    (_set(4, "all_nouns", "['a', 'b']"), r":5: all_nouns has 2 entries but all_noun_classes has 1"),
    (_set(5, "narration_id", "P01_11_0"), r":6: duplicate narration_id 'P01_11_0' \(first on line 2\)"),
    (_set(2, "verb_class", "x"), r":3: verb_class 'x' is not an integer"),
    (_set(2, "verb_class", "97"), r":3: verb_class 97 is outside \[0, 97\)"),
    (lambda rows: rows[3].pop(), r":4: 14 fields, expected 15"),
])
def test_clip_csv_errors_name_file_line_and_problem(tmp_path, ek100_dir, edit, message):
    path = _write_clips(tmp_path / "clips.csv", ek100_dir, edit)
    with pytest.raises(ek100.AnnotationError, match=str(path).replace(".", r"\.") + message):
        ek100.read_clips(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ek100.AnnotationError, match="nope.csv: file not found"):
        ek100.read_clips(tmp_path / "nope.csv")


def test_test_sentence_must_name_a_clip(tmp_path, ek100_dir):
    clips = ek100.read_clips(_write_clips(tmp_path / "clips.csv", ek100_dir))
    sentences_path = tmp_path / "sentences.csv"
    sentences_path.write_text("narration_id,narration\nP01_11_0,take plate\nP99_01_7,fly\n")
    sentences = ek100.read_sentences(sentences_path)
    with pytest.raises(ek100.AnnotationError,
                       match=r"sentences\.csv:3: narration_id 'P99_01_7' is not a clip"):
        sentences.labels(clips)


def test_train_sentence_errors(tmp_path):
    path = tmp_path / "train_sentences.csv"
    header = "narration_id,narration,verb_class,noun_classes,verb,nouns\n"
    path.write_text(header + 'a,open door,3,[3],open,[\'door\']\nb,x,3,"[3, 4]",open,[\'door\']\n')
    with pytest.raises(ek100.AnnotationError, match=r":3: nouns has 1 entries but noun_classes has 2"):
        ek100.read_sentences(path)
    path.write_text(header + 'a,open door,3,[3],open,[\'door\']\na,x,3,[3],open,[\'door\']\n')
    with pytest.raises(ek100.AnnotationError, match=r":3: duplicate narration_id 'a'"):
        ek100.read_sentences(path)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path, ek100_dir):
    path = _write_clips(tmp_path / "clips.csv", ek100_dir)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as spreadsheet programs save UTF-8
    assert ek100.read_clips(path).narration_id[0] == "P01_11_0"


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path, ek100_dir):
    path = _write_clips(tmp_path / "clips.csv", ek100_dir)
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b",caf\xe9 ", 1)  # a Latin-1 'e acute' in participant_id
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ek100.AnnotationError, match=r"clips\.csv:4: byte 0xe9 is not UTF-8"):
        ek100.read_clips(path)


def test_an_oversized_field_is_named_by_line(tmp_path, ek100_dir):
    path = _write_clips(tmp_path / "clips.csv", ek100_dir,
                        _set(2, "narration", "x" * (csv.field_size_limit() + 1)))
    with pytest.raises(ek100.AnnotationError, match=r"clips\.csv:3: field larger than field limit"):
        ek100.read_clips(path)


def test_narration_ids_are_read_in_the_row_order_of_the_table(test_split, ek100_dir):
    clips, _ = test_split
    ids = ek100.read_narration_ids(ek100_dir / ek100.TEST_CLIPS_FILE)
    np.testing.assert_array_equal(ids, clips.narration_id)
