"""The common clip table (`ek100.ClipTable`) built from the rows of any corpus, and the rows a
corpus's reader skips.

Every corpus reader (`tempret_jax.data.corpora`) gives the preparation one table per split in
EK-100's shape, so that the records, the shard keys (`tasks.row_digest`) and the record checks
(`verify.CheckedRecords`) are the same for all. A corpus without a field leaves it empty: no
frame numbers (-1: its sources are videos), no verb or noun strings, -1 for a missing class.

A row that cannot become a clip (a malformed line, a number that does not parse, a clip without
duration) is skipped as the authors' loaders skip it, but never silently: its ``file:line:
reason`` goes into `SplitTables.bad_rows`, which the preparation writes into its report.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import math
import os
import pathlib
from collections.abc import Iterator

import numpy as np

from tempret_jax.data import ek100


@dataclasses.dataclass(frozen=True)
class ClipRow:
    """One clip as the common table holds it (times in seconds)."""

    narration_id: str  # unique and stable within its split
    participant_id: str
    video_id: str
    narration: str
    start: float
    stop: float
    verb_classes: tuple[int, ...] = ()  # the first is the table's verb_class (-1 if none)
    noun_classes: tuple[int, ...] = ()  # the first is noun_class (-1 if none)
    narration_time: float = math.nan


@dataclasses.dataclass(frozen=True)
class SplitTables:
    """What a corpus reader gives for a split: its clips, its texts (`ek100.SentenceTable`, no
    classes) and the ``file:line: reason`` of every row it skipped."""

    clips: ek100.ClipTable
    sentences: ek100.SentenceTable
    bad_rows: tuple[str, ...] = ()


def clip_table(path, rows: list[ClipRow]) -> ek100.ClipTable:
    """The common table of ``rows`` (in their order); ``path`` names the file they come from."""
    n = len(rows)
    text = lambda name: np.asarray([getattr(r, name) for r in rows], dtype=str).reshape(n)  # noqa: E731
    first = lambda classes: np.asarray([c[0] if c else -1 for c in classes], np.int32)  # noqa: E731
    nouns = tuple(tuple(r.noun_classes) for r in rows)
    return ek100.ClipTable(
        path=str(path), narration_id=text("narration_id"), participant_id=text("participant_id"),
        video_id=text("video_id"),
        narration_timestamp=np.asarray([r.narration_time for r in rows], np.float64),
        start_timestamp=np.asarray([r.start for r in rows], np.float64),
        stop_timestamp=np.asarray([r.stop for r in rows], np.float64),
        start_frame=np.full(n, -1, np.int64), stop_frame=np.full(n, -1, np.int64),
        narration=text("narration"), verb=np.full(n, "", dtype=str),
        verb_class=first([r.verb_classes for r in rows]), noun=np.full(n, "", dtype=str),
        noun_class=first(nouns), all_nouns=tuple(("",) * len(c) for c in nouns),
        noun_classes=nouns)


def sentence_table(path, ids, texts) -> ek100.SentenceTable:
    """A sentence table without classes: (m,) ids and (m,) texts."""
    return ek100.SentenceTable(str(path), np.asarray(ids, dtype=str).reshape(len(ids)),
                               np.asarray(texts, dtype=str).reshape(len(texts)))


def unique_ids(ids: list[str], lines: list[str], bad_rows: list[str]) -> list[int]:
    """The positions of the ids no earlier one repeats (``lines[i]`` is id i's ``file:line``);
    each repeat is added to ``bad_rows``."""
    first: dict[str, str] = {}
    kept = []
    for i, (nid, line) in enumerate(zip(ids, lines)):
        if nid in first:
            bad_rows.append(f"{line}: duplicate id {nid!r} (first at {first[nid]}); skipped")
            continue
        first[nid] = line
        kept.append(i)
    return kept


def check_span(start: float, stop: float, what: str) -> tuple[float, float]:
    """(start, stop) as the authors' loaders read them: start clamped at 0 (EgoVLP's
    ``max(float(clip_start), 0)``); ValueError unless the span is finite and not empty."""
    start = max(start, 0.0)
    if not (math.isfinite(start) and math.isfinite(stop) and start < stop):
        raise ValueError(f"{what} [{start}, {stop}] s is empty or not finite")
    return start, stop


class TagParser:
    """Python list literals of class indices (``'[192, 115, 12]'``) -> tuples of ints in
    [0, n), read with ast.literal_eval (never eval); a text seen before is not parsed again
    (EgoClip's 3.8M rows repeat few distinct tag lists)."""

    def __init__(self, num_classes: int):
        self.num_classes, self.seen = num_classes, {}

    def __call__(self, text: str, column: str) -> tuple[int, ...]:
        if text not in self.seen:
            try:
                value = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                value = None
            if not (isinstance(value, (list, tuple)) and all(
                    type(v) is int and 0 <= v < self.num_classes for v in value)):
                raise ValueError(f"{column} {text!r} is not a list of class indices in "
                                 f"[0, {self.num_classes})")
            self.seen[text] = tuple(value)
        return self.seen[text]


def number(text, column: str) -> float:
    """A float field; ValueError naming the column otherwise."""
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{column} {text!r} is not a number") from None


def integer(text, column: str) -> int:
    """An integer field; ValueError naming the column otherwise."""
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{column} {text!r} is not an integer") from None


def csv_rows(path, expected: tuple[str, ...], bad_rows: list[str],
             delimiter: str = ",") -> Iterator[tuple[str, dict[str, str]]]:
    """Yields (``file:line``, {column: field}) of each row of a UTF-8 CSV whose header has the
    ``expected`` columns (others are ignored); a row with another number of fields is added to
    ``bad_rows`` and skipped (pandas' ``error_bad_lines=False``, but named). A missing file, a
    header without the columns or text that is not UTF-8: ek100.AnnotationError."""
    if not os.path.isfile(path):
        raise ek100.AnnotationError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, [])
            if missing := [c for c in expected if c not in header]:
                raise ek100.AnnotationError(f"{path}:1: missing column(s) {', '.join(missing)}; "
                                            f"expected {', '.join(expected)}")
            cols = {c: header.index(c) for c in expected}
            line = reader.line_num
            for row in reader:
                where, line = f"{path}:{line + 1}", reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    bad_rows.append(f"{where}: {len(row)} fields, expected {len(header)}; skipped")
                    continue
                yield where, {c: row[i] for c, i in cols.items()}
        except (csv.Error, UnicodeDecodeError) as e:
            raise ek100.AnnotationError(f"{path}:{reader.line_num + 1}: {e}") from None


def read_text_lines(path) -> list[str]:
    """The lines of a UTF-8 text file, without their line ends; AnnotationError if unreadable."""
    try:
        return pathlib.Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise ek100.AnnotationError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ek100.AnnotationError(f"{path}: not readable UTF-8 text: {e}") from None
