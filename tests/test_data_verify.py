"""A prepared data set is checked before it is trusted: its annotation copies against the digests
taken at preparation, a user's annotation folder against them, each record against its table
row, and features.json against the feature types that prepare writes."""

import csv
import json
import pathlib
import shutil
import sys

import pytest
import tensorflow_datasets as tfds

from tempret_jax.data import ek100, pipeline, prepare, synthetic, verify

TINY = synthetic.SynthConfig(num_train_videos=1, num_test_videos=1, num_participants=1,
                             clips_per_video=3, width=96, height=64, fps=10,
                             clip_seconds=(0.6, 1.0), gap_seconds=(0.2, 0.3), gop=10)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(annotation folder it was prepared from, data set folder)."""
    annotations = synthetic.generate(tmp_path_factory.mktemp("synth"), TINY)
    config = prepare.PrepareConfig(str(annotations), str(annotations.parent),
                                   str(tmp_path_factory.mktemp("prepared")), num_frames=4,
                                   short_side=32, num_workers=1, progress=False)
    return annotations, pathlib.Path(prepare.prepare(config)["dataset_dir"])


@pytest.fixture
def dataset(prepared, tmp_path) -> pathlib.Path:
    """A copy of the prepared data set that a test may damage."""
    return pathlib.Path(shutil.copytree(prepared[1], tmp_path / "dataset"))


def _rewrite(path, edit) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _rename_narration(rows):
    rows[1][rows[0].index("narration")] = "stir the soup"


def _escaped(path) -> str:
    return str(path).replace(".", r"\.")


def test_the_data_set_records_each_annotation_copy_and_its_original(prepared):
    annotations, dataset = prepared
    digests = json.loads((dataset / verify.DIGESTS_FILE).read_text())
    copies = sorted(p.name for p in (dataset / prepare.ANNOTATIONS).iterdir())
    assert sorted(digests) == copies and ek100.TRAIN_CLIPS_FILE in copies
    for name, entry in digests.items():
        assert entry["prepared_from"] == str(annotations / name)
        assert entry["sha256"] == verify.sha256(annotations / name)


def test_a_changed_copy_is_refused_naming_it_and_its_original(prepared, dataset):
    annotations, _ = prepared
    copy = dataset / prepare.ANNOTATIONS / ek100.TEST_CLIPS_FILE
    _rewrite(copy, _rename_narration)
    message = (f"{_escaped(copy)} is changed: it is not the copy of "
               f"{_escaped(annotations / ek100.TEST_CLIPS_FILE)} that the records were prepared")
    with pytest.raises(verify.DatasetError, match=message):
        prepare.load_annotations(dataset, "test")
    with pytest.raises(verify.DatasetError, match=message):
        pipeline.open_split(dataset, "test")
    prepare.load_annotations(dataset, "train")  # the train files are intact


def test_an_annotation_folder_is_compared_with_the_one_prepared_from(prepared, tmp_path):
    annotations, dataset = prepared
    prepare.check_annotation_dir(dataset, annotations)
    other = pathlib.Path(shutil.copytree(annotations, tmp_path / "other"))
    prepare.check_annotation_dir(dataset, other)  # the same content elsewhere is fine
    _rewrite(other / ek100.TRAIN_CLIPS_FILE, _rename_narration)
    with pytest.raises(verify.DatasetError, match=(
            f"{_escaped(other / ek100.TRAIN_CLIPS_FILE)} is not the file "
            f"{_escaped(annotations / ek100.TRAIN_CLIPS_FILE)} that the data set")):
        prepare.check_annotation_dir(dataset, other)
    (other / ek100.TRAIN_CLIPS_FILE).unlink()
    with pytest.raises(verify.DatasetError, match=f"{_escaped(other / ek100.TRAIN_CLIPS_FILE)} "
                                                  f"is missing"):
        prepare.check_annotation_dir(dataset, other)


def test_a_data_set_without_digests_loads_with_a_warning(dataset):
    (dataset / verify.DIGESTS_FILE).unlink()  # as an older version prepared them
    with pytest.warns(UserWarning, match=f"no {verify.DIGESTS_FILE} .prepared by an older version"):
        clips, sentences = prepare.load_annotations(dataset, "test")
    assert len(clips) == TINY.clips_per_video and len(sentences) > 0


def test_a_record_whose_row_is_another_clip_is_refused(dataset):
    # An older data set (no digests) whose annotation copy was replaced by a reordered file:
    # clip_index would give each record another clip's classes.
    (dataset / verify.DIGESTS_FILE).unlink()
    copy = dataset / prepare.ANNOTATIONS / ek100.TEST_CLIPS_FILE
    _rewrite(copy, lambda rows: rows.insert(1, rows.pop(2)))
    table = ek100.read_clips(copy)
    with pytest.warns(UserWarning):
        source = pipeline.open_split(dataset, "test")
        with pytest.raises(verify.DatasetError, match=(
                rf"\(test\): record 0 \({table.narration_id[1]}\) has clip_index 0, which is "
                rf"'{table.narration_id[0]}' in {_escaped(copy)}")):
            source[0]
        batches = pipeline.eval_pipeline(dataset, 2, num_frames=2, resolution=16,
                                         process_index=0, process_count=1)
        with pytest.raises(verify.DatasetError, match="different preparations"):
            next(iter(batches))


def test_the_allowed_feature_types_are_those_prepare_writes(prepared):
    _, dataset = prepared
    spec = json.loads((dataset / verify.FEATURES_FILE).read_text())
    written = set(_values(spec, "pythonClassName"))
    assert written == verify.feature_types() and len(written) == 5
    verify.check_features(dataset)


def _values(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _values(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _values(v, key)


@pytest.mark.parametrize("spelling", ["pythonClassName", "python_class_name"])
def test_a_features_json_naming_another_class_is_refused_before_tfds_imports_it(
        dataset, tmp_path, monkeypatch, spelling):
    # TFDS imports the module of every type that features.json names: a data set from elsewhere
    # would run code. A module that leaves a mark when imported stands in for it.
    planted = f"planted_{spelling.lower()}"
    (tmp_path / f"{planted}.py").write_text(
        f"import pathlib\npathlib.Path({str(tmp_path / 'ran')!r}).write_text('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = dataset / verify.FEATURES_FILE
    spec = json.loads(path.read_text())
    frames = spec["featuresDict"]["features"]["frames"]
    del frames["pythonClassName"]
    frames[spelling] = f"{planted}.Sequence"
    path.write_text(json.dumps(spec))
    with pytest.raises(verify.DatasetError, match=(
            f"{_escaped(path)}: feature type '{planted}.Sequence' is not one that prepare writes")):
        pipeline.open_split(dataset, "test")
    assert not (tmp_path / "ran").exists() and planted not in sys.modules
    with pytest.raises(ValueError):  # what the check prevents
        tfds.builder_from_directory(str(dataset))
    assert (tmp_path / "ran").read_text() == "imported"
    monkeypatch.delitem(sys.modules, planted)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable JSON"),
    (json.dumps({"type": "os.system", "content": {}}), "feature type 'os.system'"),  # legacy form
    (json.dumps({"featuresDict": {"features": {"x": {"pythonClassName": {"a": 1}}}},
                 "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict"}),
     r"feature type \{'a': 1\}"),  # not even a name
])
def test_an_unreadable_or_odd_features_json_is_refused(dataset, content, message):
    (dataset / verify.FEATURES_FILE).write_text(content)
    with pytest.raises(verify.DatasetError, match=message):
        pipeline.open_split(dataset, "test")
