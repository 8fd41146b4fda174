"""EK-100 preparation: videos or JPEG folders + annotation CSVs -> a TFDS data set (ArrayRecord).

Per clip we store N frames (default 32) at the centres of N equal segments of
[start_timestamp, stop_timestamp], resized to a short side S (default 256) and JPEG-encoded,
with the clip's ids, narration, classes and timestamps (`_features`). No TensorFlow: frames are
a sequence of JPEG byte strings, which `builder.as_data_source()` returns as ``bytes``.

The sources of a video (MP4 file, AVION's chunk folder or JPEG frames folder) and which of their
frames a clip takes: `tempret_jax.data.decode`.

Work happens in two stages so that a killed run resumes where it stopped:
  1. decode: one shard file per video in ``<work_dir>/shards/`` (written to a temporary name,
     then renamed: a shard that exists is complete), videos in parallel over a process pool;
  2. assemble: a `tfds.core.GeneratorBasedBuilder` reads the shards in CSV order (TFDS writes to
     an ``incomplete.*`` folder and renames it at the end), then the annotation CSVs are copied
     into ``<dataset_dir>/annotations/`` for the pipelines.
A missing or unreadable video, a missing frame or a clip outside its video is listed in
``<output_dir>/prepare_report.csv`` with the reason and skipped, or raises `PrepareError` with
``strict``. The record of a clip keeps its CSV row in ``clip_index``.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import time

import numpy as np

from tempret_jax import atomic
from tempret_jax.data import decode, ek100

SPLIT_FILES = {"train": (ek100.TRAIN_CLIPS_FILE, ek100.TRAIN_SENTENCES_FILE),
               "test": (ek100.TEST_CLIPS_FILE, ek100.TEST_SENTENCES_FILE)}
EXTRA_ANNOTATION_FILES = ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv",
                          "EPIC_100_video_info.csv")
ANNOTATIONS = "annotations"  # folder of the data set that gets the annotation CSVs
REPORT_FILE = "prepare_report.csv"  # in output_dir: split, video_id, narration_id, reason
SUMMARY_FILE = "prepare_summary.json"  # in output_dir: what `prepare` returns
DATASET_NAME = "ek100_mir"  # the data set is <output_dir>/<DATASET_NAME>/<config_name>/<VERSION>
VERSION = "1.0.0"


class PrepareError(RuntimeError):
    """A video or clip could not be prepared (raised with ``strict``, or a bad set-up)."""


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` reads, writes and stores per clip (see the module docstring)."""

    annotation_dir: str  # the EK-100 annotation CSVs (`SPLIT_FILES`, `EXTRA_ANNOTATION_FILES`)
    video_root: str  # the sources, `decode.find_source`'s layouts
    output_dir: str  # the TFDS data set, the report and the summary
    work_dir: str | None = None  # the shards; default <output_dir>/work
    splits: tuple[str, ...] = ("train", "test")
    num_frames: int = 32  # N, frames stored per clip
    short_side: int = 256  # S, pixels of a stored frame's shorter side
    jpeg_quality: int = 90  # of the frames that are re-encoded
    chunk_seconds: int = 15  # length of AVION's chunks, for chunk folders
    num_workers: int = 0  # decoding processes; 0: all CPU cores
    strict: bool = False  # raise PrepareError at the first skipped clip
    progress: bool = True  # a tqdm bar

    @property
    def work(self) -> pathlib.Path:
        return pathlib.Path(self.work_dir or pathlib.Path(self.output_dir) / "work")

    @property
    def config_name(self) -> str:
        return f"frames{self.num_frames}_short{self.short_side}"


def dataset_dir(output_dir, num_frames: int = 32, short_side: int = 256) -> pathlib.Path:
    """Where `prepare` puts the TFDS data set (open it with `tfds.builder_from_directory`)."""
    name = PrepareConfig("", "", "", num_frames=num_frames, short_side=short_side).config_name
    return pathlib.Path(output_dir) / DATASET_NAME / name / VERSION


# ---------------------------------------------------------------------------------------------
# Stage 1: decode one video into a shard.


@dataclasses.dataclass(frozen=True)
class ClipTask:
    row: int  # row in the split's clip CSV
    narration_id: str
    start: float
    stop: float
    start_frame: int
    stop_frame: int


@dataclasses.dataclass(frozen=True)
class VideoTask:
    split: str
    video_id: str
    participant_id: str
    clips: tuple[ClipTask, ...]

    def key(self, config: PrepareConfig) -> str:
        """Identifies the task's content and settings: a shard is reused only if this matches."""
        text = json.dumps([self.split, self.video_id, [dataclasses.astuple(c) for c in self.clips],
                           config.num_frames, config.short_side, config.jpeg_quality])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def shard_path(config: PrepareConfig, task: VideoTask) -> pathlib.Path:
    return config.work / "shards" / task.split / f"{task.video_id}.npz"


def process_video(task: VideoTask, config: PrepareConfig) -> dict:
    """Decodes the clips of one video into its shard; returns what happened (JSON-able).

    The shard (npz) holds every frame's JPEG bytes concatenated (``jpeg``, uint8), their
    boundaries (``offsets``, (n_clips * N + 1,) int64) and a JSON header (``meta``).
    """
    result = {"split": task.split, "video_id": task.video_id, "written": [], "skipped": [],
              "bytes": 0}
    try:
        kind, path = decode.find_source(config.video_root, task.participant_id, task.video_id)
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
    meta = {"key": task.key(config), "narration_ids": kept, "skipped": result["skipped"]}
    # A file object, not a name: np.savez would append ".npz" to the temporary's name.
    with atomic.writer(shard_path(config, task), "wb") as f:
        np.savez(f, jpeg=np.frombuffer(b"".join(blobs), np.uint8),
                 offsets=np.concatenate([[0], np.cumsum(sizes)]),
                 meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    result["written"], result["bytes"] = kept, int(sizes.sum())
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


def _cached_result(task: VideoTask, config: PrepareConfig) -> dict | None:
    """The result of an earlier run from the task's shard, or None if it must be (re)done."""
    path = shard_path(config, task)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            size = int(z["offsets"][-1])
    except (OSError, ValueError, KeyError):
        return None
    if meta.get("key") != task.key(config):
        return None
    return {"split": task.split, "video_id": task.video_id, "written": meta["narration_ids"],
            "skipped": meta["skipped"], "bytes": size}


# ---------------------------------------------------------------------------------------------
# Stage 2: the TFDS builder.


def _features():
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


def _builder(config: PrepareConfig, tables: dict[str, ek100.ClipTable]):
    """A TFDS builder whose examples come from the shards of `config.work`, in CSV order."""
    import tensorflow_datasets as tfds

    class Ek100Mir(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """EPIC-KITCHENS-100 MIR clips as JPEG frame sequences (tempret_jax.data.prepare)."""

        VERSION = tfds.core.Version(VERSION)
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(
            name=config.config_name,
            description=f"{config.num_frames} frames per clip, short side {config.short_side}")]

        # The builder has no source folder of its own (no checksums, no metadata files); without
        # this TFDS 4.9 looks for one and needs `importlib_resources` on Python >= 3.11.
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=_features(),
                                         disable_shuffling=True)  # records in CSV order

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in tables}

        def _generate_examples(self, split):
            yield from _examples(config, split, tables[split])

    return Ek100Mir(data_dir=config.output_dir, file_format="array_record")


def _examples(config: PrepareConfig, split: str, table: ek100.ClipTable):
    shard_id, frames = None, {}
    for row in range(len(table)):
        video_id = table.video_id[row]
        if video_id != shard_id:  # EK-100 CSVs group clips by video: each shard is read once
            path = config.work / "shards" / split / f"{video_id}.npz"
            frames = read_shard(path)[1] if path.is_file() else {}
            shard_id = video_id
        nid = table.narration_id[row]
        if nid not in frames:
            continue
        yield nid, {
            "frames": frames[nid],
            "frame_times": decode.sample_times(table.start_timestamp[row], table.stop_timestamp[row],
                                        config.num_frames).astype(np.float32),
            "narration_id": nid, "participant_id": table.participant_id[row],
            "video_id": video_id, "narration": table.narration[row],
            "verb_class": table.verb_class[row], "noun_class": table.noun_class[row],
            "noun_classes": np.asarray(table.noun_classes[row], np.int32),
            "start_timestamp": table.start_timestamp[row],
            "stop_timestamp": table.stop_timestamp[row],
            "start_frame": table.start_frame[row], "stop_frame": table.stop_frame[row],
            "clip_index": row,
        }


# ---------------------------------------------------------------------------------------------
# The driver.


def _tasks(split: str, table: ek100.ClipTable) -> list[VideoTask]:
    by_video: dict[str, list[int]] = {}
    for row, video_id in enumerate(table.video_id):
        by_video.setdefault(str(video_id), []).append(row)
    return [VideoTask(split, video_id, str(table.participant_id[rows[0]]), tuple(
        ClipTask(row, str(table.narration_id[row]), float(table.start_timestamp[row]),
                 float(table.stop_timestamp[row]), int(table.start_frame[row]),
                 int(table.stop_frame[row])) for row in rows))
            for video_id, rows in by_video.items()]


def _write_report(path: pathlib.Path, results: list[dict]) -> None:
    with atomic.writer(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "video_id", "narration_id", "reason"])
        for r in results:
            for nid, reason in r["skipped"]:
                writer.writerow([r["split"], r["video_id"], nid, reason])


def _run_tasks(tasks: list[VideoTask], config: PrepareConfig) -> list[dict]:
    """Processes the tasks without a shard, in parallel; returns every task's result."""
    from tqdm import tqdm
    results = {t: _cached_result(t, config) for t in tasks}
    pending = [t for t, r in results.items() if r is None]
    bar = tqdm(total=sum(len(t.clips) for t in tasks), unit="clip", desc="decoding",
               disable=not config.progress, dynamic_ncols=True)
    bar.update(sum(len(t.clips) for t, r in results.items() if r is not None))

    def done(task, result):
        results[task] = result
        bar.update(len(task.clips))
        if config.strict and result["skipped"]:
            nid, reason = result["skipped"][0]
            raise PrepareError(f"{task.split} clip {nid} ({task.video_id}): {reason}")

    workers = config.num_workers or os.cpu_count() or 1
    try:
        if workers == 1:
            for task in pending:
                done(task, process_video(task, config))
        else:
            # spawn: workers must not inherit the parent's threads (tqdm, TFDS, JAX).
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(process_video, t, config): t for t in pending}
                try:
                    for future in concurrent.futures.as_completed(futures):
                        done(futures[future], future.result())
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return [results[t] for t in tasks]


def _assemble(builder, results: list[dict]) -> None:
    """Writes the TFDS data set, unless one made from exactly these clips is already there."""
    import tensorflow_datasets as tfds
    made_from = hashlib.sha256(json.dumps(
        [[r["split"], r["video_id"], r["written"]] for r in results]).encode()).hexdigest()
    stamp = pathlib.Path(builder.data_dir) / "prepared_from.txt"
    current = stamp.is_file() and stamp.read_text() == made_from
    mode = (tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS if current
            else tfds.download.GenerateMode.FORCE_REDOWNLOAD)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    if not current:
        atomic.write_text(stamp, made_from)


def prepare(config: PrepareConfig) -> dict:
    """Runs the whole preparation (resuming from ``config.work``); returns the summary.

    Summary: {'dataset_dir', 'clips': {split: written}, 'skipped': {split: n}, 'bytes',
    'seconds', 'report'}. It is also written to ``<output_dir>/prepare_summary.json``.
    """
    t0 = time.time()
    annotation_dir, output = pathlib.Path(config.annotation_dir), pathlib.Path(config.output_dir)
    unknown = [s for s in config.splits if s not in SPLIT_FILES]
    if unknown:
        raise PrepareError(f"unknown split(s) {unknown}; expected some of {list(SPLIT_FILES)}")
    if config.num_frames < 1 or config.short_side < 8:
        raise PrepareError(f"num_frames {config.num_frames} must be >= 1 and short_side "
                           f"{config.short_side} >= 8")
    tables = {s: ek100.read_clips(annotation_dir / SPLIT_FILES[s][0]) for s in config.splits}
    for s in config.splits:
        ek100.read_sentences(annotation_dir / SPLIT_FILES[s][1])  # validate before hours of work
    output.mkdir(parents=True, exist_ok=True)
    tasks = [t for s in config.splits for t in _tasks(s, tables[s])]
    results = _run_tasks(tasks, config)
    _write_report(output / REPORT_FILE, results)
    for s in config.splits:
        if not any(r["written"] for r in results if r["split"] == s):
            raise PrepareError(f"no clip of split {s!r} could be prepared; reasons in "
                               f"{output / REPORT_FILE}")

    builder = _builder(config, tables)
    _assemble(builder, results)
    target = pathlib.Path(builder.data_dir) / ANNOTATIONS
    names = [name for s in config.splits for name in SPLIT_FILES[s]]
    names += [name for name in EXTRA_ANNOTATION_FILES if (annotation_dir / name).is_file()]
    for name in names:
        with atomic.path(target / name) as tmp:
            shutil.copyfile(annotation_dir / name, tmp)

    summary = {
        "dataset_dir": str(builder.data_dir),
        "clips": {s: sum(len(r["written"]) for r in results if r["split"] == s) for s in config.splits},
        "skipped": {s: sum(len(r["skipped"]) for r in results if r["split"] == s)
                    for s in config.splits},
        "bytes": sum(f.stat().st_size for f in pathlib.Path(builder.data_dir).glob("*array_record*")),
        "seconds": round(time.time() - t0, 2),
        "report": str(output / REPORT_FILE),
    }
    atomic.write_json(output / SUMMARY_FILE, summary)
    return summary


def load_annotations(dataset_dir, split: str) -> tuple[ek100.ClipTable, ek100.SentenceTable]:
    """The clip and sentence tables of a prepared split (records name their row: ``clip_index``)."""
    folder = pathlib.Path(dataset_dir) / ANNOTATIONS
    clips_file, sentences_file = SPLIT_FILES[split]
    return ek100.read_clips(folder / clips_file), ek100.read_sentences(folder / sentences_file)
