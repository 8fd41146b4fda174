"""Ego4D as EgoVLP releases it for pretraining and selection: EgoClip (``egoclip.csv``) and
EgoMCQ (``egomcq.json``), and the layouts of the Ego4D videos.

EgoClip (showlab/EgoVLP@928406c README.md lines 40-60): tab-separated, columns `EGOCLIP_COLUMNS`,
one clip-narration pair a row; ``tag_verb`` / ``tag_noun`` are Python list literals of indices
into Ego4D's 118 verb and 582 noun classes. EgoVLP reads it with pandas'
``error_bad_lines=False``; we skip the same rows, and any we cannot use, but name each
(`clip_rows.SplitTables.bad_rows`). A clip's id is its ``clip_idx``.

EgoMCQ (data_loader/EgoClip_EgoMCQ_dataset.py ``_get_val_item``): {"<i>": {"query": clip,
"choices": {"0".."4": clip}, "answer": 0-4, "types": 1 | 2}} where a clip has EgoClip's fields.
``types`` 1 is inter-video and 2 intra-video, as the json and the dataset's comment say
(model/metric.py calls type 1 'Intra-video': showlab/EgoVLP issue #19). The prepared split holds
each distinct choice clip once (same video_uid, clip_start, clip_end), grouped by video;
`EgoMCQTable` maps the questions onto those clips.

Times as EgoVLP's ``_get_video_path`` takes them: clip_start clamped at 0; we also end a clip at
the video's end (``video_dur``; EgoVLP clamps frame indices to the chunk's length).

Videos (`find_source`), looked up in this order under the video root:
  <uid>/<i>.mp4     EgoVLP's chunks (utils/video_chunk.py): chunk i holds [600 i, 600 (i + 1)) s
  <uid>.mp4/<s>.mp4 AVION's chunks starting at second s (avion/data/clip_dataset.py
                    ``video_loader``, 300 s for Ego4D)
  <uid>.mp4         the whole video
A clip that crosses a chunk boundary takes each frame from the chunk that holds its time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np

from tempret_jax.data import clip_rows, decode, ek100

EGOCLIP_FILE = "egoclip.csv"
EGOMCQ_FILE = "egomcq.json"
EGOCLIP_COLUMNS = ("clip_idx", "video_uid", "video_dur", "narration_source", "narration_ind",
                   "narration_time", "clip_start", "clip_end", "clip_text", "tag_verb",
                   "tag_noun")
NUM_VERBS, NUM_NOUNS = 118, 582  # EgoClip_EgoMCQ_dataset.py verb_dim, noun_dim
CHUNK_SECONDS = 600  # EgoClip_EgoMCQ_dataset.py chunk_sec
NUM_CHOICES = 5
INTER_VIDEO, INTRA_VIDEO = 1, 2  # EgoMCQ ``types``


@dataclasses.dataclass(frozen=True)
class EgoClipTable:
    """The rows of egoclip.csv that make clips, in file order (n of them): the common table and
    the columns it cannot hold. Rows of ``clips`` are the prepared records' ``clip_index``."""

    clips: ek100.ClipTable  # narration_id = clip_idx, verb_class / noun_class the first tags
    clip_idx: np.ndarray  # (n,) int64
    video_dur: np.ndarray  # (n,) float64 seconds
    narration_source: np.ndarray  # (n,) str
    narration_ind: np.ndarray  # (n,) int64
    tag_verb: tuple[tuple[int, ...], ...]  # all verb tags of each row
    tag_noun: tuple[tuple[int, ...], ...]  # all noun tags of each row
    bad_rows: tuple[str, ...]  # 'file:line: reason' of each row skipped

    def verb_multi_hot(self) -> np.ndarray:
        """(n, 118) bool: row i's verb tags (EgoVLP's ``verb_vec``)."""
        return multi_hot(self.tag_verb, NUM_VERBS)

    def noun_multi_hot(self) -> np.ndarray:
        """(n, 582) bool: row i's noun tags (EgoVLP's ``noun_vec``)."""
        return multi_hot(self.tag_noun, NUM_NOUNS)


@dataclasses.dataclass(frozen=True)
class EgoMCQTable:
    """EgoMCQ's q questions over its distinct choice clips (``clips``, grouped by video)."""

    clips: ek100.ClipTable  # each distinct choice clip once; its rows are the records' clip_index
    question_id: np.ndarray  # (q,) str, the json's keys
    query: np.ndarray  # (q,) str, the query's clip_text
    choices: np.ndarray  # (q, 5) int64, rows of ``clips`` in the order of the keys "0".."4"
    answer: np.ndarray  # (q,) int64 in [0, 5)
    type: np.ndarray  # (q,) int64: INTER_VIDEO (1) or INTRA_VIDEO (2)
    bad_rows: tuple[str, ...]  # 'file: question <key>: reason' of each question skipped


def multi_hot(tags, num_classes: int) -> np.ndarray:
    """(len(tags), num_classes) bool with row i true at the classes ``tags[i]``."""
    out = np.zeros((len(tags), num_classes), bool)
    rows = np.repeat(np.arange(len(tags)), [len(t) for t in tags])
    out[rows, np.fromiter((c for t in tags for c in t), np.int64, len(rows))] = True
    return out


class _ClipReader:
    """Turns EgoClip fields (a csv row or an EgoMCQ json clip) into a `clip_rows.ClipRow`;
    ValueError naming the field otherwise. Tag texts are parsed once each."""

    def __init__(self):
        self.verbs, self.nouns = clip_rows.TagParser(NUM_VERBS), clip_rows.TagParser(NUM_NOUNS)

    def __call__(self, fields: dict, narration_id: str | None = None) -> clip_rows.ClipRow:
        for column in ("video_uid", "clip_text"):
            if not isinstance(fields.get(column), str) or not fields[column]:
                raise ValueError(f"{column} {fields.get(column)!r} is not a non-empty string")
        first = clip_rows.number(fields.get("clip_start"), "clip_start")
        last = clip_rows.number(fields.get("clip_end"), "clip_end")
        stop = min(last, clip_rows.number(fields.get("video_dur", math.inf), "video_dur"))
        start, stop = clip_rows.check_span(first, stop, "clip [clip_start, min(clip_end, "
                                                        "video_dur)]")
        uid = fields["video_uid"]
        return clip_rows.ClipRow(
            narration_id=narration_id or f"{uid}_{first!r}_{last!r}", participant_id="",
            video_id=uid, narration=fields["clip_text"], start=start, stop=stop,
            verb_classes=self.verbs(str(fields.get("tag_verb", "[]")), "tag_verb"),
            noun_classes=self.nouns(str(fields.get("tag_noun", "[]")), "tag_noun"),
            narration_time=clip_rows.number(fields.get("narration_time", math.nan),
                                            "narration_time"))


def read_egoclip(path) -> EgoClipTable:
    """Reads egoclip.csv (tab-separated, `EGOCLIP_COLUMNS`): every row that makes a clip, and
    'file:line: reason' for each that does not (wrong field count, a number or tag list that
    does not parse, an empty span, a repeated clip_idx). A missing file or column raises
    ek100.AnnotationError."""
    bad: list[str] = []
    read_clip, rows, lines, extra = _ClipReader(), [], [], []
    for where, r in clip_rows.csv_rows(path, EGOCLIP_COLUMNS, bad, delimiter="\t"):
        try:
            idx = clip_rows.integer(r["clip_idx"], "clip_idx")
            ind = clip_rows.integer(r["narration_ind"], "narration_ind")
            row = read_clip(r, narration_id=str(idx))  # checks video_dur too
        except ValueError as e:
            bad.append(f"{where}: {e}; skipped")
            continue
        rows.append(row)
        lines.append(where)
        extra.append((idx, float(r["video_dur"]), r["narration_source"], ind))
    kept_rows = clip_rows.unique_ids([r.narration_id for r in rows], lines, bad)
    kept = [rows[i] for i in kept_rows]
    columns = list(zip(*[extra[i] for i in kept_rows])) or [(), (), (), ()]
    return EgoClipTable(
        clips=clip_rows.clip_table(path, kept), clip_idx=np.asarray(columns[0], np.int64),
        video_dur=np.asarray(columns[1], np.float64),
        narration_source=np.asarray(columns[2], dtype=str).reshape(len(kept)),
        narration_ind=np.asarray(columns[3], np.int64),
        tag_verb=tuple(r.verb_classes for r in kept), tag_noun=tuple(r.noun_classes for r in kept),
        bad_rows=tuple(bad))


def _question(item, read_clip) -> tuple[str, list[clip_rows.ClipRow], int, int]:
    """(query text, the 5 choice clips, answer, type) of one EgoMCQ entry; ValueError if bad."""
    if not isinstance(item, dict):
        raise ValueError(f"is {type(item).__name__}, expected an object")
    query, choices = item.get("query"), item.get("choices")
    if not isinstance(query, dict) or not isinstance(query.get("clip_text"), str):
        raise ValueError("query has no clip_text string")
    keys = [str(i) for i in range(NUM_CHOICES)]
    if not isinstance(choices, dict) or sorted(choices) != keys:
        raise ValueError(f"choices {sorted(choices) if isinstance(choices, dict) else choices!r}"
                         f" are not the keys {keys}")
    clips = []
    for k in keys:
        if not isinstance(choices[k], dict):
            raise ValueError(f"choice {k} is not an object")
        try:
            clips.append(read_clip(choices[k]))
        except ValueError as e:
            raise ValueError(f"choice {k}: {e}") from None
    answer, kind = item.get("answer"), item.get("types")
    if type(answer) is not int or not 0 <= answer < NUM_CHOICES:
        raise ValueError(f"answer {answer!r} is not an integer in [0, {NUM_CHOICES})")
    if kind not in (INTER_VIDEO, INTRA_VIDEO) or type(kind) is not int:
        raise ValueError(f"types {kind!r} is not {INTER_VIDEO} (inter-video) or {INTRA_VIDEO} "
                         f"(intra-video)")
    return query["clip_text"], clips, answer, kind


def read_egomcq(path) -> EgoMCQTable:
    """Reads egomcq.json: its questions and their distinct choice clips (see the module
    docstring); a question that is not as expected is skipped and named in ``bad_rows``. A file
    that is not a JSON object raises ek100.AnnotationError."""
    try:
        data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ek100.AnnotationError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise ek100.AnnotationError(f"{path}: not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise ek100.AnnotationError(f"{path}: a {type(data).__name__}, expected an object of "
                                    f"questions keyed by number")
    read_clip, bad, questions = _ClipReader(), [], []
    for key, item in data.items():
        try:
            questions.append((key, *_question(item, read_clip)))
        except ValueError as e:
            bad.append(f"{path}: question {key!r}: {e}; skipped")
    distinct = {c.narration_id: c for q in questions for c in q[2]}
    clips = sorted(distinct.values(), key=lambda c: (c.video_id, c.start, c.stop))
    row = {c.narration_id: i for i, c in enumerate(clips)}
    q = len(questions)
    return EgoMCQTable(
        clips=clip_rows.clip_table(path, clips),
        question_id=np.asarray([x[0] for x in questions], dtype=str).reshape(q),
        query=np.asarray([x[1] for x in questions], dtype=str).reshape(q),
        choices=np.asarray([[row[c.narration_id] for c in x[2]] for x in questions],
                           np.int64).reshape(q, NUM_CHOICES),
        answer=np.asarray([x[3] for x in questions], np.int64),
        type=np.asarray([x[4] for x in questions], np.int64), bad_rows=tuple(bad))


def read_split(annotation_dir, split: str) -> clip_rows.SplitTables:
    """'train': EgoClip, each clip's text its own sentence; 'test': EgoMCQ's choice clips, the
    sentences its queries (ids the question keys)."""
    folder = pathlib.Path(annotation_dir)
    if split == "train":
        table = read_egoclip(folder / EGOCLIP_FILE)
        clips = table.clips
        return clip_rows.SplitTables(clips, clip_rows.sentence_table(
            clips.path, clips.narration_id, clips.narration), table.bad_rows)
    mcq = read_egomcq(folder / EGOMCQ_FILE)
    return clip_rows.SplitTables(mcq.clips, clip_rows.sentence_table(
        mcq.clips.path, mcq.question_id, mcq.query), mcq.bad_rows)


def find_source(video_root, participant_id: str, video_id: str) -> tuple[str, pathlib.Path]:
    """(kind, path) of an Ego4D video (``participant_id`` is unused: Ego4D's uids are global):
    'indexed' for EgoVLP's chunk folder, 'chunked' for AVION's, 'mp4' for a file; raises
    decode.SkipVideo naming the paths tried."""
    root = pathlib.Path(video_root)
    if (root / video_id).is_dir():
        return "indexed", root / video_id
    path = root / f"{video_id}.mp4"
    if path.is_dir():
        return "chunked", path
    if path.is_file():
        return "mp4", path
    raise decode.SkipVideo(f"missing video: neither {root / video_id}/<i>.mp4 (EgoVLP's chunks) "
                           f"nor {path} (file or AVION's chunk folder)")
