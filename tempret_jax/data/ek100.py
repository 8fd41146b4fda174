"""EPIC-KITCHENS-100 Multi-Instance Retrieval annotations and relevance (docs/design.md, Relevance).

Tables are read with validation: every problem is reported as ``file:line: problem``.

Relevance between clip a and sentence b is `tempret_jax.relevance`'s formula on their
(verb_class, noun_classes) labels, the noun classes taken as sets (a few EK-100 rows repeat a
class, e.g. ``[10, 10]``). A test sentence has the classes of its representative clip; a train
sentence has its own ``verb_class`` / ``noun_classes`` columns.

Relevance depends only on the (verb, noun set) *key* of each side, so everything here works on
unique keys: the 9,668 x 3,842 test matrix is computed from 1,979 x ~1,900 key pairs, and the
train split (67,217 x 15,989) is never materialised: `TrainRelevance` keeps, per unique clip key,
the sentence keys with rel > 0.1.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import os
import pathlib
import re

import numpy as np

# As `formula`: `relevance` here names this module's ClassLabels form of it.
from tempret_jax import relevance as formula

NUM_VERB_CLASSES = 97
NUM_NOUN_CLASSES = 300

CLIP_COLUMNS = (
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
    "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
    "noun_class", "all_nouns", "all_noun_classes",
)
TEST_SENTENCE_COLUMNS = ("narration_id", "narration")
TRAIN_SENTENCE_COLUMNS = ("narration_id", "narration", "verb_class", "noun_classes", "verb", "nouns")

TEST_CLIPS_FILE = "EPIC_100_retrieval_test.csv"
TEST_SENTENCES_FILE = "EPIC_100_retrieval_test_sentence.csv"
TRAIN_CLIPS_FILE = "EPIC_100_retrieval_train.csv"
TRAIN_SENTENCES_FILE = "EPIC_100_retrieval_train_sentence.csv"

_TIMESTAMP = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")


class AnnotationError(ValueError):
    """An annotation file does not have the expected content; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class ClipTable:
    """The rows of a clip CSV (15 columns), one array entry per clip, in file order.

    Timestamps are in seconds (float64). ``noun_classes`` holds each clip's class list as
    written (tuple of ints, ``noun_class`` first), ``all_nouns`` the matching noun strings.
    """

    path: str
    narration_id: np.ndarray  # (n,) str
    participant_id: np.ndarray  # (n,) str
    video_id: np.ndarray  # (n,) str
    narration_timestamp: np.ndarray  # (n,) float64 seconds, NaN where the file leaves it empty
    start_timestamp: np.ndarray  # (n,) float64 seconds
    stop_timestamp: np.ndarray  # (n,) float64 seconds
    start_frame: np.ndarray  # (n,) int64
    stop_frame: np.ndarray  # (n,) int64
    narration: np.ndarray  # (n,) str
    verb: np.ndarray  # (n,) str
    verb_class: np.ndarray  # (n,) int32
    noun: np.ndarray  # (n,) str
    noun_class: np.ndarray  # (n,) int32
    all_nouns: tuple[tuple[str, ...], ...]
    noun_classes: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.narration_id)

    def index(self) -> dict[str, int]:
        """Maps narration_id -> row index."""
        return {nid: i for i, nid in enumerate(self.narration_id)}

    def labels(self) -> ClassLabels:
        """The (verb, noun set) labels of every clip."""
        return ClassLabels.from_lists(self.verb_class, self.noun_classes)


@dataclasses.dataclass(frozen=True)
class SentenceTable:
    """The rows of a sentence CSV, in file order.

    A test file has 2 columns (narration_id of a representative clip, narration); a train file
    6, and then ``verb_class``, ``noun_classes``, ``verb``, ``nouns`` are filled (else None).
    """

    path: str
    narration_id: np.ndarray  # (m,) str
    narration: np.ndarray  # (m,) str
    verb_class: np.ndarray | None = None  # (m,) int32
    noun_classes: tuple[tuple[int, ...], ...] | None = None
    verb: np.ndarray | None = None  # (m,) str
    nouns: tuple[tuple[str, ...], ...] | None = None

    def __len__(self) -> int:
        return len(self.narration_id)

    @property
    def has_classes(self) -> bool:
        return self.verb_class is not None

    def labels(self, clips: ClipTable | None = None) -> ClassLabels:
        """The (verb, noun set) labels of every sentence.

        A train file carries its own classes. A test file takes those of the clip its
        narration_id names, so ``clips`` is required then; an id that is not a clip is an error
        naming the sentence file and line.
        """
        if self.has_classes:
            return ClassLabels.from_lists(self.verb_class, self.noun_classes)
        if clips is None:
            raise ValueError(f"{self.path}: a test sentence file needs the clip table for its classes")
        index = clips.index()
        rows = np.empty(len(self), np.int64)
        for i, nid in enumerate(self.narration_id):
            if nid not in index:
                raise AnnotationError(
                    f"{self.path}:{i + 2}: narration_id {str(nid)!r} is not a clip of {clips.path}")
            rows[i] = index[nid]
        return clips.labels().take(rows)


@dataclasses.dataclass(frozen=True)
class ClassLabels:
    """Per-item relevance labels: a verb class and a multi-hot noun set.

    verb: (n,) int32; nouns: (n, NUM_NOUN_CLASSES) bool.
    """

    verb: np.ndarray
    nouns: np.ndarray

    @classmethod
    def from_lists(cls, verb_class, noun_classes) -> ClassLabels:
        verb = np.asarray(verb_class, np.int32)
        nouns = np.zeros((len(verb), NUM_NOUN_CLASSES), bool)
        rows = np.repeat(np.arange(len(verb)), [len(c) for c in noun_classes])
        cols = np.fromiter((c for cs in noun_classes for c in cs), np.int64, len(rows))
        nouns[rows, cols] = True
        return cls(verb, nouns)

    def __len__(self) -> int:
        return len(self.verb)

    def take(self, idx) -> ClassLabels:
        return ClassLabels(self.verb[idx], self.nouns[idx])

    def unique(self) -> tuple[ClassLabels, np.ndarray]:
        """(unique labels, inverse) with ``unique.take(inverse)`` equal to self."""
        packed = np.concatenate([self.verb[:, None].view(np.uint8).reshape(len(self), -1),
                                 np.packbits(self.nouns, axis=1)], axis=1)
        _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
        return self.take(first), inverse.reshape(-1)


def relevance(a: ClassLabels, b: ClassLabels) -> np.ndarray:
    """Dense relevance between every item of ``a`` and every item of ``b``.

    Returns (len(a), len(b)) float32, values in {0} U [0.5 * IoU] U {0.5 + 0.5 * IoU}; exactly
    1.0 when verb and noun set are equal (`tempret_jax.relevance.matrix`).
    """
    return formula.matrix(a.verb, a.nouns, b.verb, b.nouns)


def pair_relevance(a: ClassLabels, b: ClassLabels) -> np.ndarray:
    """Relevance of aligned pairs (a[i], b[i]): (n,) float32, same values as `relevance`."""
    return formula.aligned(a.verb, a.nouns, b.verb, b.nouns)


def relevance_by_keys(a: ClassLabels, b: ClassLabels) -> np.ndarray:
    """`relevance(a, b)`, computed on unique keys and expanded: (len(a), len(b)) float32."""
    ua, ia = a.unique()
    ub, ib = b.unique()
    return relevance(ua, ub)[ia[:, None], ib[None, :]]


def load_test_relevance(annotation_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The EK-100 MIR test relevance.

    Returns (rel, clip_ids, sentence_ids): rel (n_clips, n_sentences) float32 (9,668 x 3,842 for
    the real files), clip_ids the clips' narration_ids (row order), sentence_ids the sentences'
    narration_ids (column order).
    """
    annotation_dir = pathlib.Path(annotation_dir)
    clips = read_clips(annotation_dir / TEST_CLIPS_FILE)
    sentences = read_sentences(annotation_dir / TEST_SENTENCES_FILE)
    rel = relevance_by_keys(clips.labels(), sentences.labels(clips))
    return rel, clips.narration_id, sentences.narration_id


class TrainRelevance:
    """Relevance and positive candidates for a train split, without the dense matrix.

    Clips and sentences are grouped by (verb, noun set) key. For each unique clip key we keep the
    sentence keys with rel > `tempret_jax.relevance.POSITIVE_THRESHOLD` (CSR layout) and the
    running count of their sentences, so that a positive can be drawn uniformly among sentences
    (docs/design.md, Relevance) in O(log k). Memory is O(#clip keys x #positive sentence keys), tens
    of MB on EK-100.
    """

    def __init__(self, clip_labels: ClassLabels, sentence_labels: ClassLabels,
                 threshold: float = formula.POSITIVE_THRESHOLD, chunk: int = 256):
        self.clip_keys, self.clip_key_of = clip_labels.unique()
        self.sentence_keys, self.sentence_key_of = sentence_labels.unique()
        # Sentences sorted by key: the sentences of key k are order[start[k]:start[k + 1]].
        self.sentence_order = np.argsort(self.sentence_key_of, kind="stable").astype(np.int32)
        counts = np.bincount(self.sentence_key_of, minlength=len(self.sentence_keys))
        self.sentence_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

        indptr, keys, cum = [np.zeros(1, np.int64)], [], []
        for lo in range(0, len(self.clip_keys), chunk):
            rel = relevance(self.clip_keys.take(slice(lo, lo + chunk)), self.sentence_keys)
            rows, cols = np.nonzero(rel > threshold)
            keys.append(cols.astype(np.int32))
            row_counts = np.bincount(rows, minlength=len(rel))
            row_starts = np.cumsum(row_counts) - row_counts
            indptr.append(indptr[-1][-1] + np.cumsum(row_counts))
            # Running count of sentences over each row's keys, restarting at every row.
            running = np.concatenate([[0], np.cumsum(counts[cols])])
            cum.append(running[1:] - np.repeat(running[row_starts], row_counts))
        self.pos_indptr = np.concatenate(indptr)
        self.pos_keys = np.concatenate(keys)
        self.pos_cum = np.concatenate(cum)

    @classmethod
    def from_tables(cls, clips: ClipTable, sentences: SentenceTable, **kw) -> TrainRelevance:
        return cls(clips.labels(), sentences.labels(clips), **kw)

    def __call__(self, clip_idx, sentence_idx) -> np.ndarray:
        """Relevance of aligned (clip, sentence) index pairs: same shape as the inputs, float32."""
        clip_idx, sentence_idx = np.broadcast_arrays(clip_idx, sentence_idx)
        a = self.clip_keys.take(self.clip_key_of[clip_idx.reshape(-1)])
        b = self.sentence_keys.take(self.sentence_key_of[sentence_idx.reshape(-1)])
        return pair_relevance(a, b).reshape(clip_idx.shape)

    def num_positives(self, clip_idx: int) -> int:
        """How many sentences have rel > threshold with this clip."""
        k = self.clip_key_of[clip_idx]
        lo, hi = self.pos_indptr[k], self.pos_indptr[k + 1]
        return int(self.pos_cum[hi - 1]) if hi > lo else 0

    def positives(self, clip_idx: int) -> np.ndarray:
        """Sorted indices of the sentences with rel > threshold for this clip: (k,) int32."""
        k = self.clip_key_of[clip_idx]
        keys = self.pos_keys[self.pos_indptr[k]:self.pos_indptr[k + 1]]
        parts = [self.sentence_order[self.sentence_start[s]:self.sentence_start[s + 1]] for s in keys]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int32)

    def sample_positive(self, clip_idx: int, rng: np.random.Generator) -> tuple[int, float]:
        """Draws a sentence uniformly among the clip's positives: (sentence index, relevance).

        Returns (-1, 1.0) when the clip has none: the caller then uses the clip's own narration.
        """
        k = self.clip_key_of[clip_idx]
        lo, hi = self.pos_indptr[k], self.pos_indptr[k + 1]
        if hi == lo:
            return -1, 1.0
        cum = self.pos_cum[lo:hi]
        u = rng.integers(cum[-1])
        j = int(np.searchsorted(cum, u, side="right"))
        s = self.pos_keys[lo + j]
        offset = u - (cum[j - 1] if j else 0)
        sentence = int(self.sentence_order[self.sentence_start[s] + offset])
        return sentence, float(self(clip_idx, sentence))


# ---------------------------------------------------------------------------------------------
# Reading and validation.


def _csv_rows(path):
    """Yields (first line, fields) of the rows of a UTF-8 CSV (a byte-order mark allowed); a byte
    that is not UTF-8 or a row csv rejects (a field over its size limit) is an AnnotationError."""
    if not os.path.isfile(path):
        raise AnnotationError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader, line = csv.reader(f), 0
        try:
            for row in reader:
                yield line + 1, row
                line = reader.line_num
        except csv.Error as e:
            raise AnnotationError(f"{path}:{line + 1}: {e}") from None
        except UnicodeDecodeError:
            data = pathlib.Path(path).read_bytes()  # the text layer decodes ahead: find the byte
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:  # 10: the newline byte
                raise AnnotationError(f"{path}:{data.count(10, 0, e.start) + 1}: byte "
                                      f"{data[e.start]:#04x} is not UTF-8") from None


def _rows(path, expected: tuple[str, ...]):
    """Yields (line number, row dict) of a CSV after checking its header has ``expected``."""
    rows = _csv_rows(path)
    header = next(rows, (1, []))[1]
    if missing := [c for c in expected if c not in header]:
        raise AnnotationError(f"{path}:1: missing column(s) {', '.join(missing)}; "
                              f"expected {', '.join(expected)}")
    cols = {c: header.index(c) for c in expected}
    for line, row in rows:
        if not row:
            continue
        if len(row) != len(header):
            raise AnnotationError(f"{path}:{line}: {len(row)} fields, expected {len(header)}")
        yield line, {c: row[i] for c, i in cols.items()}


def _timestamp(path, line, column, text) -> float:
    m = _TIMESTAMP.match(text.strip())
    if not m:
        raise AnnotationError(f"{path}:{line}: {column} {text!r} is not a timestamp HH:MM:SS.ff")
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


def _int(path, line, column, text) -> int:
    try:
        return int(text)
    except ValueError:
        raise AnnotationError(f"{path}:{line}: {column} {text!r} is not an integer") from None


def _list(path, line, column, text, kind: type) -> tuple:
    try:
        value = ast.literal_eval(text)  # literals only: safe on untrusted text
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise AnnotationError(
            f"{path}:{line}: {column} {text!r} is not a list of {kind.__name__}s")
    return tuple(value)


def _check_class(path, line, column, value, n) -> None:
    if not 0 <= value < n:
        raise AnnotationError(f"{path}:{line}: {column} {value} is outside [0, {n})")


def _classes(path, line, row: dict[str, str], nouns_column: str,
             classes_column: str) -> tuple[int, tuple[str, ...], tuple[int, ...]]:
    """(verb_class, nouns, noun classes) of a row, checked: classes in range, one noun per class."""
    verb_class = _int(path, line, "verb_class", row["verb_class"])
    _check_class(path, line, "verb_class", verb_class, NUM_VERB_CLASSES)
    nouns = _list(path, line, nouns_column, row[nouns_column], str)
    classes = _list(path, line, classes_column, row[classes_column], int)
    if len(nouns) != len(classes):
        raise AnnotationError(f"{path}:{line}: {nouns_column} has {len(nouns)} entries but "
                              f"{classes_column} has {len(classes)}")
    for c in classes:
        _check_class(path, line, "noun class", c, NUM_NOUN_CLASSES)
    return verb_class, nouns, classes


def _check_unique(path, ids: list[str], lines: list[int]) -> None:
    first: dict[str, int] = {}
    for nid, line in zip(ids, lines):
        if nid in first:
            raise AnnotationError(
                f"{path}:{line}: duplicate narration_id {nid!r} (first on line {first[nid]})")
        first[nid] = line


def read_clips(path) -> ClipTable:
    """Reads and validates an EK-100 clip CSV (retrieval train/test, 15 columns)."""
    cols: dict[str, list] = {c: [] for c in CLIP_COLUMNS}
    lines = []
    for line, r in _rows(path, CLIP_COLUMNS):
        ts = {c: _timestamp(path, line, c, r[c]) for c in ("start_timestamp", "stop_timestamp")}
        # 70 real test rows leave the narration time empty; it is informative only.
        ts["narration_timestamp"] = (_timestamp(path, line, "narration_timestamp", r["narration_timestamp"])
                                     if r["narration_timestamp"].strip() else np.nan)
        if ts["start_timestamp"] >= ts["stop_timestamp"]:
            raise AnnotationError(f"{path}:{line}: start_timestamp {r['start_timestamp']} is not "
                                  f"before stop_timestamp {r['stop_timestamp']}")
        frames = {c: _int(path, line, c, r[c]) for c in ("start_frame", "stop_frame")}
        if frames["start_frame"] >= frames["stop_frame"]:
            raise AnnotationError(f"{path}:{line}: start_frame {frames['start_frame']} is not "
                                  f"before stop_frame {frames['stop_frame']}")
        verb_class, nouns, classes = _classes(path, line, r, "all_nouns", "all_noun_classes")
        noun_class = _int(path, line, "noun_class", r["noun_class"])
        _check_class(path, line, "noun class", noun_class, NUM_NOUN_CLASSES)
        if noun_class not in classes:
            raise AnnotationError(
                f"{path}:{line}: noun_class {noun_class} is not in all_noun_classes {list(classes)}")
        for c in ("narration_id", "participant_id", "video_id", "narration", "verb", "noun"):
            cols[c].append(r[c])
        for c, v in {**ts, **frames, "verb_class": verb_class, "noun_class": noun_class,
                     "all_nouns": nouns, "all_noun_classes": classes}.items():
            cols[c].append(v)
        lines.append(line)
    _check_unique(path, cols["narration_id"], lines)
    s = lambda c: np.asarray(cols[c], dtype=str)  # noqa: E731
    return ClipTable(
        path=str(path), narration_id=s("narration_id"), participant_id=s("participant_id"),
        video_id=s("video_id"),
        narration_timestamp=np.asarray(cols["narration_timestamp"], np.float64),
        start_timestamp=np.asarray(cols["start_timestamp"], np.float64),
        stop_timestamp=np.asarray(cols["stop_timestamp"], np.float64),
        start_frame=np.asarray(cols["start_frame"], np.int64),
        stop_frame=np.asarray(cols["stop_frame"], np.int64),
        narration=s("narration"), verb=s("verb"),
        verb_class=np.asarray(cols["verb_class"], np.int32), noun=s("noun"),
        noun_class=np.asarray(cols["noun_class"], np.int32),
        all_nouns=tuple(cols["all_nouns"]), noun_classes=tuple(cols["all_noun_classes"]))


def read_narration_ids(path) -> np.ndarray:
    """The narration_id column of a clip CSV, (n,) str, in the row order of `read_clips`."""
    return np.asarray([r["narration_id"] for _, r in _rows(path, ("narration_id",))], dtype=str)


def read_sentences(path) -> SentenceTable:
    """Reads and validates a sentence CSV: test (2 columns) or train (6 columns), by its header."""
    header = next(_csv_rows(path), (1, []))[1]
    is_train = all(c in header for c in TRAIN_SENTENCE_COLUMNS)
    expected = TRAIN_SENTENCE_COLUMNS if is_train else TEST_SENTENCE_COLUMNS
    ids, narrations, lines = [], [], []
    verb_class, noun_classes, verbs, nouns = [], [], [], []
    for line, r in _rows(path, expected):
        ids.append(r["narration_id"])
        narrations.append(r["narration"])
        lines.append(line)
        if is_train:
            v, ns, cs = _classes(path, line, r, "nouns", "noun_classes")
            verb_class.append(v)
            noun_classes.append(cs)
            verbs.append(r["verb"])
            nouns.append(ns)
    _check_unique(path, ids, lines)
    table = SentenceTable(str(path), np.asarray(ids, dtype=str), np.asarray(narrations, dtype=str))
    if is_train:
        table = dataclasses.replace(
            table, verb_class=np.asarray(verb_class, np.int32), noun_classes=tuple(noun_classes),
            verb=np.asarray(verbs, dtype=str), nouns=tuple(nouns))
    return table

