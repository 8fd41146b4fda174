"""The work of a preparation (`tempret_jax.data.prepare`): one `VideoTask` per video of a split,
and the key that says when the video's shard must be made again.

A record is determined by the fields it stores from its table row (`row_digest`), the frames of
its source as they are on disk (`decode.source_identity`: path, size and mtime_ns of the file
or of every file of the folder) and the options (N frames, short side, JPEG quality, chunk
length). A shard holds the records of one video, so its key (`VideoTask.key`) is the digest of
all of these for the video's rows: a shard is reused only while the key matches, and editing a
row, touching a video or changing an option rebuilds exactly the shards it concerns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

from tempret_jax.data import corpora, decode, ek100


class PrepareError(RuntimeError):
    """A video or clip could not be prepared (raised with ``strict``, or a bad set-up)."""


def digest(value) -> str:
    """A short sha256 (16 hex digits) of a JSON-able value."""
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ClipTask:
    row: int  # row in the split's clip table
    narration_id: str
    start: float
    stop: float
    start_frame: int
    stop_frame: int
    digest: str  # of every field the record stores from its row (`row_digest`)


@dataclasses.dataclass(frozen=True)
class VideoTask:
    split: str
    video_id: str
    participant_id: str
    clips: tuple[ClipTask, ...]

    def key(self, config, source: str) -> str:
        """Digest of all that the shard's records depend on: their rows, the identity of the
        source (`decode.source_identity`) and the options of ``config`` (a
        `prepare.PrepareConfig`). Not the row numbers: moving a row keeps its frames (the data
        set is assembled again, as its record's clip_index changes)."""
        return digest([self.split, self.video_id, source, [c.digest for c in self.clips],
                       config.num_frames, config.short_side, config.jpeg_quality,
                       config.chunk_seconds])

    def source_key(self, config) -> tuple[str, pathlib.Path, str]:
        """(kind, path, key) of the video's source as it is now; raises decode.SkipVideo."""
        find = corpora.get(config.corpus).find_source
        kind, path = find(config.video_root, self.participant_id, self.video_id)
        return kind, path, self.key(config, decode.source_identity(kind, path))


def video_tasks(split: str, table: ek100.ClipTable) -> list[VideoTask]:
    """The tasks of a split's clip table, one per video, in order of first appearance."""
    by_video: dict[str, list[int]] = {}
    for row, video_id in enumerate(table.video_id):
        by_video.setdefault(str(video_id), []).append(row)
    return [VideoTask(split, video_id, str(table.participant_id[rows[0]]), tuple(
        ClipTask(row, str(table.narration_id[row]), float(table.start_timestamp[row]),
                 float(table.stop_timestamp[row]), int(table.start_frame[row]),
                 int(table.stop_frame[row]), row_digest(table, row)) for row in rows))
            for video_id, rows in by_video.items()]


def row_digest(table: ek100.ClipTable, row: int) -> str:
    """Digest of the fields a record stores from its table row (all but clip_index, its number):
    ids, narration, classes, nouns, times and frame numbers."""
    return digest([str(getattr(table, c)[row]) for c in (
        "narration_id", "participant_id", "video_id", "narration")] + [
        int(table.verb_class[row]), int(table.noun_class[row]), list(table.all_nouns[row]),
        list(table.noun_classes[row]), float(table.start_timestamp[row]),
        float(table.stop_timestamp[row]), int(table.start_frame[row]),
        int(table.stop_frame[row])])
