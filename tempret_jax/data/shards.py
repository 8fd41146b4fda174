"""Stage 1 of a preparation (`tempret_jax.data.prepare`): the clips of one video decoded into
its shard, ``<work>/shards/<split>/<video_id>.npz``.

A shard is written to a temporary name and then renamed, so a shard that exists is complete; it
is reused only while its key (`tasks.VideoTask.key`) is the one it was made with. Each video is
independent of the others: `process_video` is what a process pool (or a Beam pipeline) maps
over the tasks. ``config`` is a `prepare.PrepareConfig`.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from tempret_jax import atomic
from tempret_jax.data import decode, tasks


def shard_path(config, split: str, video_id: str) -> pathlib.Path:
    """Where the shard of a video is."""
    return config.work / "shards" / split / f"{video_id}.npz"


def process_video(task: tasks.VideoTask, config) -> dict:
    """Decodes the clips of one video into its shard; returns what happened (JSON-able):
    {'split', 'video_id', 'key' (None: no shard), 'written': [narration_id],
    'skipped': [[narration_id, reason]], 'bytes'}.

    The shard (npz) holds every frame's JPEG bytes concatenated (``jpeg``, uint8), their
    boundaries (``offsets``, (n_clips * N + 1,) int64) and a JSON header (``meta``).
    """
    result = {"split": task.split, "video_id": task.video_id, "key": None, "written": [],
              "skipped": [], "bytes": 0}
    try:
        kind, path, key = task.source_key(config)  # before decoding: a later change is seen
        produced = decode.clip_jpegs(kind, path, task.clips, num_frames=config.num_frames,
                                     short_side=config.short_side, quality=config.jpeg_quality,
                                     chunk_seconds=config.chunk_seconds)
        blobs, kept = [], []
        for clip, frames in produced:
            if isinstance(frames, str):
                result["skipped"].append([clip.narration_id, frames])
                continue
            blobs.extend(frames)
            kept.append(clip.narration_id)
    except decode.SkipVideo as e:
        result["skipped"] = [[c.narration_id, str(e)] for c in task.clips]
        return result  # no shard: a later run tries this video again
    sizes = np.array([len(b) for b in blobs], np.int64)
    meta = {"key": key, "narration_ids": kept, "skipped": result["skipped"]}
    # A file object, not a name: np.savez would append ".npz" to the temporary's name.
    with atomic.writer(shard_path(config, task.split, task.video_id), "wb") as f:
        np.savez(f, jpeg=np.frombuffer(b"".join(blobs), np.uint8),
                 offsets=np.concatenate([[0], np.cumsum(sizes)]),
                 meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    result["key"], result["written"], result["bytes"] = key, kept, int(sizes.sum())
    return result


def read_shard(path) -> tuple[dict, dict[str, list[bytes]]]:
    """(meta, {narration_id: [JPEG bytes] * N}) of a shard written by `process_video`."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        jpeg, offsets = z["jpeg"].tobytes(), z["offsets"]
    ids = meta["narration_ids"]
    n = (len(offsets) - 1) // max(1, len(ids))
    frames = {nid: [jpeg[offsets[i * n + j]:offsets[i * n + j + 1]] for j in range(n)]
              for i, nid in enumerate(ids)}
    return meta, frames


def cached_result(task: tasks.VideoTask, config) -> dict | None:
    """The result of an earlier run from the task's shard, or None if it must be (re)done."""
    path = shard_path(config, task.split, task.video_id)
    if not path.is_file():
        return None
    try:
        key = task.source_key(config)[2]
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            size = int(z["offsets"][-1])
    except (decode.SkipVideo, OSError, ValueError, KeyError):
        return None
    if meta.get("key") != key:
        return None
    return {"split": task.split, "video_id": task.video_id, "key": key,
            "written": meta["narration_ids"], "skipped": meta["skipped"], "bytes": size}
