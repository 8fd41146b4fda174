"""Charades-Ego (first-person videos only), as EgoVLP evaluates on it (showlab/EgoVLP@928406c
data_loader/CharadesEgo_dataset.py, utils/charades_meta.py).

Files: ``CharadesEgo_v1_{train,test}_only1st.csv`` (one video a row; we read the columns ``id``,
``subject``, ``script``, ``actions``, ``length``; ``actions`` is ``'c092 11.90 21.20;c147 0.00
12.60'``: class, start and end in seconds, or empty) and ``Charades_v1_classes.txt`` (157 lines
``'c000 Holding some clothes'``). Videos: ``<root>/<id>.mp4``.

  train: one clip per action segment, as charades_meta.py makes metadata_train.csv: text the
         class's name, class its index (``verb_class``); a video without actions gives none.
         The segment ends at the video's ``length`` at the latest (EgoVLP's reader clamps the
         end frame to the video's frame count).
  test:  one clip per video over the whole video [0, length] (EgoVLP's test samples the whole
         video uniformly), text its ``script`` (the column EgoVLP's test returns as text),
         labels the set of its action classes (`CharadesEgoTable.multi_hot`, for mAP); a video
         without actions stays, with no label.
A row or segment that makes no clip (a field that does not parse, an empty segment) is skipped
and named in ``bad_rows``; a missing column or a classes file not as above raises
ek100.AnnotationError.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np

from tempret_jax.data import clip_rows, decode, ego4d, ek100

TRAIN_FILE = "CharadesEgo_v1_train_only1st.csv"
TEST_FILE = "CharadesEgo_v1_test_only1st.csv"
CLASSES_FILE = "Charades_v1_classes.txt"
SPLIT_FILES = {"train": TRAIN_FILE, "test": TEST_FILE}
COLUMNS = ("id", "subject", "script", "actions", "length")
NUM_CLASSES = 157
_CLASS_LINE = re.compile(r"^c(\d{3}) (.+)$")


@dataclasses.dataclass(frozen=True)
class CharadesEgoTable:
    """The clips of a split (rows = the records' clip_index) with all their classes."""

    clips: ek100.ClipTable  # verb_class: the segment's class (train), the first label (test)
    labels: tuple[tuple[int, ...], ...]  # each clip's classes: (class,) or the video's set
    class_names: np.ndarray  # (157,) str
    bad_rows: tuple[str, ...]  # 'file:line: reason' of each row or segment skipped

    def multi_hot(self) -> np.ndarray:
        """(n, 157) bool: clip i's classes (EgoVLP's test ``target``)."""
        return ego4d.multi_hot(self.labels, NUM_CLASSES)


def read_classes(path) -> np.ndarray:
    """The 157 class names of Charades_v1_classes.txt in class order: (157,) str."""
    names = []
    for line, text in enumerate(clip_rows.read_text_lines(path), 1):
        if not text.strip():
            continue
        m = _CLASS_LINE.match(text.strip())
        if not m or int(m[1]) != len(names):
            raise ek100.AnnotationError(f"{path}:{line}: {text!r} is not 'c{len(names):03d} "
                                        f"<class name>'")
        names.append(m[2])
    if len(names) != NUM_CLASSES:
        raise ek100.AnnotationError(f"{path}: {len(names)} classes, expected {NUM_CLASSES}")
    return np.asarray(names, dtype=str)


def parse_action(text: str) -> tuple[int, float, float]:
    """'c092 11.90 21.20' -> (92, 11.9, 21.2); ValueError naming what is wrong."""
    parts = text.split(" ")
    if len(parts) != 3 or not re.fullmatch(r"c\d{3}", parts[0]) \
            or not int(parts[0][1:]) < NUM_CLASSES:
        raise ValueError(f"{text!r} is not 'cNNN start end' with cNNN below c{NUM_CLASSES:03d}")
    return (int(parts[0][1:]), clip_rows.number(parts[1], "start"),
            clip_rows.number(parts[2], "end"))


def _actions(text: str) -> list[tuple[int, float, float] | ValueError]:
    """The parsed actions of an ``actions`` field, a ValueError naming each one that is bad."""
    out = []
    for k, action in enumerate(text.split(";") if text else []):
        try:
            out.append(parse_action(action))
        except ValueError as e:
            out.append(ValueError(f"action {k}: {e}"))
    return out


def _train_clips(where: str, r: dict, names, bad: list[str]) -> list[clip_rows.ClipRow]:
    """The clips of one train video, one per action segment; bad segments into ``bad``."""
    length = clip_rows.number(r["length"], "length")
    clips = []
    for k, action in enumerate(_actions(r["actions"])):
        try:
            if isinstance(action, ValueError):
                raise action
            cls, start, end = action
            start, stop = clip_rows.check_span(
                start, min(end, length), f"action {k}: segment (ending by length {length})")
        except ValueError as e:
            bad.append(f"{where}: {e}; skipped")
            continue
        clips.append(clip_rows.ClipRow(f"{r['id']}_{k}", r["subject"], r["id"], names[cls],
                                       start, stop, verb_classes=(cls,)))
    return clips


def _test_clip(r: dict) -> clip_rows.ClipRow:
    """The whole-video clip of one test video, labelled with the set of its classes."""
    start, stop = clip_rows.check_span(0.0, clip_rows.number(r["length"], "length"), "video")
    actions = _actions(r["actions"])
    for action in actions:
        if isinstance(action, ValueError):
            raise action
    labels = dict.fromkeys(a[0] for a in actions)
    return clip_rows.ClipRow(r["id"], r["subject"], r["id"], r["script"], start, stop,
                             verb_classes=tuple(labels))


def read_charades_ego(annotation_dir, split: str) -> CharadesEgoTable:
    """The clips of a split ('train' or 'test', see the module docstring) and their classes."""
    folder = pathlib.Path(annotation_dir)
    names = read_classes(folder / CLASSES_FILE)
    path = folder / SPLIT_FILES[split]
    bad: list[str] = []
    rows, lines = [], []
    for where, r in clip_rows.csv_rows(path, COLUMNS, bad):
        try:
            clips = _train_clips(where, r, names, bad) if split == "train" else [_test_clip(r)]
        except ValueError as e:
            bad.append(f"{where}: {e}; skipped")
            continue
        rows += clips
        lines += [where] * len(clips)
    kept = [rows[i] for i in clip_rows.unique_ids([r.narration_id for r in rows], lines, bad)]
    return CharadesEgoTable(clip_rows.clip_table(path, kept),
                            tuple(r.verb_classes for r in kept), names, tuple(bad))


def read_split(annotation_dir, split: str) -> clip_rows.SplitTables:
    """The clips of a split; the sentences are the clips' texts for 'train' and the 157 class
    names (ids 'c000'..'c156') for 'test', the texts its mAP ranks."""
    table = read_charades_ego(annotation_dir, split)
    clips = table.clips
    if split == "train":
        sentences = clip_rows.sentence_table(clips.path, clips.narration_id, clips.narration)
    else:
        sentences = clip_rows.sentence_table(
            pathlib.Path(annotation_dir) / CLASSES_FILE,
            [f"c{i:03d}" for i in range(NUM_CLASSES)], table.class_names)
    return clip_rows.SplitTables(clips, sentences, table.bad_rows)


def find_source(video_root, participant_id: str, video_id: str) -> tuple[str, pathlib.Path]:
    """('mp4', <root>/<id>.mp4) (``participant_id`` unused); raises decode.SkipVideo."""
    path = pathlib.Path(video_root) / f"{video_id}.mp4"
    if not path.is_file():
        raise decode.SkipVideo(f"missing video: {path}")
    return "mp4", path
