"""The sources the preparation (`tempret_jax.data.prepare`) reads: what it needs from each.

A `Corpus` names its splits and the annotation files each is read from (the data set keeps
copies of them, with digests), a reader giving each split's clips in the common table
(`ek100.ClipTable`), its texts and the rows it skipped (`clip_rows.SplitTables`), its video
layouts (``find_source``) and the default length of its video chunks.

  ek100_mir     EPIC-KITCHENS-100 MIR (`ek100`): what the preparation always did
  ego4d         train: EgoClip, test: EgoMCQ's choice clips (`ego4d`)
  charades_ego  Charades-Ego, first-person videos (`charades_ego`)

A data set of corpus C is ``<output>/<C>/frames<N>_short<S>/1.0.0``; its ``dataset_info.json``
names C (`of_dataset`). Corpus-specific labels that the common table cannot hold are in each
module's own tables (`ego4d.read_egoclip`, `ego4d.read_egomcq`,
`charades_ego.read_charades_ego`), whose rows are the records' ``clip_index``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable

import numpy as np

from tempret_jax.data import charades_ego, clip_rows, decode, ego4d, ek100, verify


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str  # of the data set folder and of the TFDS builder
    description: str  # of the TFDS data set
    split_files: dict[str, tuple[str, ...]]  # split -> the annotation files it is read from
    extra_files: tuple[str, ...]  # also copied into the data set when present
    read: Callable[[pathlib.Path, str], clip_rows.SplitTables]  # (annotation folder, split)
    find_source: Callable[[str, str, str], tuple[str, pathlib.Path]]  # (root, participant, video)
    chunk_seconds: int  # default length of its chunked videos

    def narration_ids(self, annotation_dir, split: str) -> np.ndarray:
        """The narration_id column of a split's clip table: (n,) str, cheaply where it can be."""
        if self is EK100_MIR:  # the column alone: no timestamp or list is parsed
            return ek100.read_narration_ids(pathlib.Path(annotation_dir) /
                                            self.split_files[split][0])
        return self.read(pathlib.Path(annotation_dir), split).clips.narration_id


def _read_ek100(annotation_dir: pathlib.Path, split: str) -> clip_rows.SplitTables:
    clips_file, sentences_file = EK100_MIR.split_files[split]
    return clip_rows.SplitTables(ek100.read_clips(annotation_dir / clips_file),
                                 ek100.read_sentences(annotation_dir / sentences_file))


EK100_MIR = Corpus(
    name="ek100_mir",
    description="EPIC-KITCHENS-100 MIR clips as JPEG frame sequences (tempret_jax.data.prepare).",
    split_files={"train": (ek100.TRAIN_CLIPS_FILE, ek100.TRAIN_SENTENCES_FILE),
                 "test": (ek100.TEST_CLIPS_FILE, ek100.TEST_SENTENCES_FILE)},
    extra_files=("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv",
                 "EPIC_100_video_info.csv"),
    read=_read_ek100, find_source=decode.find_source, chunk_seconds=15)  # AVION's EK-100 chunks

EGO4D = Corpus(
    name="ego4d",
    description="Ego4D clips of EgoClip (train) and EgoMCQ (test) as JPEG frame sequences "
                "(tempret_jax.data.prepare).",
    split_files={"train": (ego4d.EGOCLIP_FILE,), "test": (ego4d.EGOMCQ_FILE,)},
    extra_files=(), read=ego4d.read_split, find_source=ego4d.find_source,
    chunk_seconds=ego4d.CHUNK_SECONDS)  # EgoVLP's layout; AVION's chunks are 300 s

CHARADES_EGO = Corpus(
    name="charades_ego",
    description="Charades-Ego first-person clips as JPEG frame sequences "
                "(tempret_jax.data.prepare).",
    split_files={split: (name, charades_ego.CLASSES_FILE)
                 for split, name in charades_ego.SPLIT_FILES.items()},
    extra_files=(), read=charades_ego.read_split, find_source=charades_ego.find_source,
    chunk_seconds=15)  # unused: its videos are files

CORPORA = {c.name: c for c in (EK100_MIR, EGO4D, CHARADES_EGO)}
DATASET_INFO = "dataset_info.json"  # TFDS's, in a data set folder: its "name" is the corpus


def get(name: str) -> Corpus:
    """The corpus called ``name``; ValueError naming the known ones otherwise."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; expected one of {', '.join(CORPORA)}")
    return CORPORA[name]


def of_dataset(dataset_dir) -> Corpus:
    """The corpus a prepared data set was made from: the name in its dataset_info.json (a
    folder without one is EK-100's, the only corpus before there were several). Raises
    verify.DatasetError naming the file if the name is not a corpus."""
    path = pathlib.Path(dataset_dir) / DATASET_INFO
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("name", EK100_MIR.name)
    except FileNotFoundError:
        return EK100_MIR
    except (OSError, ValueError, AttributeError) as e:
        raise verify.DatasetError(f"{path}: not readable JSON with a data set name: {e}") from None
    if name not in CORPORA:
        raise verify.DatasetError(f"{path}: data set {name!r} is not one of the corpora "
                         f"{', '.join(CORPORA)}")
    return CORPORA[name]
