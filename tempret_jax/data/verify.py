"""What a reader checks before it trusts a prepared data set (`tempret_jax.data.prepare`).

A data set folder holds, beside TFDS's files, ``annotations/`` (copies of the CSVs it was
prepared from, which the pipelines index with a record's ``clip_index``) and `DIGESTS_FILE`
(the sha256 of each copy and the file it was copied from). Readers check, each cheaply:
  - `check_copies`: a copy is still what was prepared, before a table is read from it;
  - `check_folder`: a user's annotation folder holds the same files as the data set's;
  - `check_features`: ``features.json`` names only the feature types of `features`, before TFDS
    reads it (TFDS imports the module that a type names: a data set is data, never code);
  - `CheckedRecords`: each record read names the narration_id that its ``clip_index`` row has
    in the split's clip table.
A data set prepared before the digests existed loads with a warning (its copies unchecked).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import warnings

import numpy as np

from tempret_jax import atomic

DIGESTS_FILE = "annotation_digests.json"  # beside annotations/: {name: {sha256, prepared_from}}
FEATURES_FILE = "features.json"  # TFDS's description of a record
# The keys under which a features.json names a class: TFDS's proto form (camelCase or snake
# case both parse), its legacy {type, content} form and a legacy content proto.
_CLASS_KEYS = ("pythonClassName", "python_class_name", "type", "proto_cls", "protoCls")


class DatasetError(ValueError):
    """A prepared data set is not what it claims; the message names the files or the record."""


def features():
    """The TFDS features of a prepared clip: what `prepare` writes, what `check_features` allows."""
    import tensorflow_datasets as tfds
    text = tfds.features.Text()
    return tfds.features.FeaturesDict({
        # JPEG bytes; `Image` / `Video` features would need TensorFlow.
        "frames": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
        "frame_times": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "narration_id": text, "participant_id": text, "video_id": text, "narration": text,
        "verb_class": tfds.features.Scalar(dtype=np.int32),
        "noun_class": tfds.features.Scalar(dtype=np.int32),
        "noun_classes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "start_timestamp": tfds.features.Scalar(dtype=np.float32),  # protos store float32
        "stop_timestamp": tfds.features.Scalar(dtype=np.float32),
        "start_frame": tfds.features.Scalar(dtype=np.int64),
        "stop_frame": tfds.features.Scalar(dtype=np.int64),
        "clip_index": tfds.features.Scalar(dtype=np.int64),  # row in the split's clip CSV
    })


def _class_names(node):
    """Every value a features.json gives under a class key, JSON held in strings included."""
    if isinstance(node, str) and node.lstrip().startswith(("{", "[")):
        try:
            node = json.loads(node)
        except ValueError:
            return
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _CLASS_KEYS:
                yield value
            yield from _class_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _class_names(value)


@functools.lru_cache(maxsize=1)
def feature_types() -> frozenset[str]:
    """The feature classes `features` is made of, as TFDS names them in features.json."""
    from google.protobuf import json_format
    return frozenset(_class_names(json_format.MessageToDict(features().to_proto())))  # as TFDS


def check_features(dataset_dir) -> None:
    """Raises DatasetError unless ``<dataset_dir>/features.json`` names only `feature_types`."""
    path = pathlib.Path(dataset_dir) / FEATURES_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: not found; expected a data set written by "
                           f"tempret_jax.data.prepare") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not readable JSON: {e}") from None
    for name in _class_names(spec):
        if not (isinstance(name, str) and name in feature_types()):
            raise DatasetError(f"{path}: feature type {name!r} is not one that prepare writes "
                               f"({', '.join(sorted(feature_types()))}); not opening it")


def sha256(path) -> str:
    """The sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_digests(copies: pathlib.Path, digests: dict[str, tuple[str, pathlib.Path]]) -> None:
    """Records, beside the folder ``copies``, {name: (sha256, original)}: the digest of each copy
    ``copies / name`` and the file it was copied from."""
    atomic.write_json(copies.parent / DIGESTS_FILE, {
        name: {"sha256": digest, "prepared_from": os.path.abspath(source)}
        for name, (digest, source) in digests.items()})


def _digests(copies: pathlib.Path) -> dict | None:
    path = copies.parent / DIGESTS_FILE
    if not path.is_file():
        warnings.warn(f"{copies.parent}: no {DIGESTS_FILE} (prepared by an older version): its "
                      f"annotation copies are not checked; prepare it again to add it",
                      stacklevel=3)
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not readable JSON: {e}") from None


def check_copies(copies, names) -> None:
    """Raises DatasetError unless each file ``copies / name`` has the sha256 recorded when the
    data set was prepared (no check, a warning, for a data set without `DIGESTS_FILE`)."""
    copies = pathlib.Path(copies)
    digests = _digests(copies)
    for name in names if digests is not None else ():
        if name not in digests:
            raise DatasetError(f"{copies.parent / DIGESTS_FILE}: no digest of {name}")
        copy, entry = copies / name, digests[name]
        if not copy.is_file() or sha256(copy) != entry["sha256"]:
            raise DatasetError(
                f"{copy} is {'missing' if not copy.is_file() else 'changed'}: it is not the copy "
                f"of {entry['prepared_from']} that the records were prepared from; prepare the "
                f"data set again")


def check_folder(copies, annotation_dir) -> None:
    """Raises DatasetError unless ``annotation_dir`` holds every annotation file that the data set
    was prepared from (as recorded; the copies in ``copies`` for an older data set), unchanged."""
    copies = pathlib.Path(copies)
    digests = _digests(copies) or {p.name: {"sha256": sha256(p), "prepared_from": str(p)}
                                    for p in sorted(copies.glob("*.csv"))}
    for name, entry in digests.items():
        given = pathlib.Path(annotation_dir) / name
        if not given.is_file() or sha256(given) != entry["sha256"]:
            raise DatasetError(
                f"{given} is {'missing' if not given.is_file() else 'not the file'} "
                f"{entry['prepared_from']} that the data set {copies.parent} was prepared from; "
                f"use the annotations it was prepared from, or prepare it from these")


class CheckedRecords:
    """A prepared split's records (random access, as TFDS gives them), each checked when read:
    its narration_id must be the one that its ``clip_index`` row has in the split's clip table
    (the file ``table``, whose narration_id column is ``narration_ids``)."""

    def __init__(self, source, name: str, table: str, narration_ids: np.ndarray):
        self.source, self.name, self.table, self.narration_ids = source, name, table, narration_ids

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        record = self.source[index]
        row, nid = int(record["clip_index"]), record["narration_id"]
        nid = nid.decode() if isinstance(nid, bytes) else str(nid)
        if not (0 <= row < len(self.narration_ids) and self.narration_ids[row] == nid):
            found = (repr(str(self.narration_ids[row])) if 0 <= row < len(self.narration_ids)
                     else "no row")
            raise DatasetError(
                f"{self.name}: record {index} ({nid}) has clip_index {row}, which is {found} in "
                f"{self.table}: records and annotations come from different preparations")
        return record
