"""EK-100 preparation: videos or JPEG folders + annotation CSVs -> a TFDS data set (ArrayRecord).

Per clip we store N frames (default 32) at the centres of N equal segments of
[start_timestamp, stop_timestamp], resized to a short side S (default 256) and JPEG-encoded,
with the clip's ids, narration, classes and timestamps (`_features`). No TensorFlow: frames are
a sequence of JPEG byte strings, which `builder.as_data_source()` returns as ``bytes``.

The sources of a video (MP4 file, AVION's chunk folder or JPEG frames folder) and which of their
frames a clip takes: `tempret_jax.data.decode`.

Work happens in two stages so that a killed run resumes where it stopped:
  1. decode: one shard file per video in ``<work_dir>/shards/`` (written to a temporary name,
     then renamed: a shard that exists is complete), videos in parallel over a process pool. A
     shard is reused only if its key matches: the digest of all its records depend on, the
     stored fields of its CSV rows (`tasks.row_digest`), its source's files (path, size,
     mtime_ns: `decode.source_identity`) and the options; a change rebuilds that shard only;
  2. assemble: a `tfds.core.GeneratorBasedBuilder` reads the shards in CSV order (TFDS writes to
     an ``incomplete.*`` folder and renames it at the end), then the annotation CSVs are copied
     into ``<dataset_dir>/annotations/`` for the pipelines, with their digests
     (`verify.DIGESTS_FILE`; readers check them). It is redone when any record's digest changed.
A missing or unreadable video, a missing or undecodable frame or a clip outside its video is
listed in ``<output_dir>/prepare_report.csv`` with the reason and skipped; then nothing is
assembled (`SkippedClipsError`) unless ``allow_skipped``; ``strict`` raises `PrepareError` at
the first. The record of a clip keeps its CSV row in ``clip_index``. A run first removes what a
killed one left (`_remove_leftovers`): one preparation per output folder at a time.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import time

import numpy as np

from tempret_jax import atomic
from tempret_jax.data import decode, ek100, tasks, verify, workers

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


class SkippedClipsError(PrepareError):
    """Clips were skipped (the report lists them) and ``allow_skipped`` is off: not assembled."""


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
    allow_skipped: bool = False  # assemble without the skipped clips (else SkippedClipsError)
    progress: bool = True  # a tqdm bar

    @property
    def work(self) -> pathlib.Path:
        return pathlib.Path(self.work_dir or pathlib.Path(self.output_dir) / "work")

    @property
    def config_name(self) -> str:
        return f"frames{self.num_frames}_short{self.short_side}"


def dataset_dir(output_dir, num_frames: int = 32, short_side: int = 256) -> pathlib.Path:
    """Where `prepare` puts the TFDS data set (open a split with `pipeline.open_split`, which
    checks it before TFDS reads it)."""
    name = PrepareConfig("", "", "", num_frames=num_frames, short_side=short_side).config_name
    return pathlib.Path(output_dir) / DATASET_NAME / name / VERSION


def find_dataset(path) -> str:
    """The prepared data set at ``path``: ``path`` itself, or the one data set under a
    preparation's output folder (`dataset_dir`'s layout), so that the ``--output`` of
    tools/prepare_ek100.py can be given as it is. Raises PrepareError when the folder holds
    several (naming them: give one) and returns ``path`` unchanged when it holds none."""
    path = pathlib.Path(path)
    if (path / ANNOTATIONS).is_dir():
        return str(path)
    found = sorted(p.parent for p in path.glob(f"{DATASET_NAME}/*/*/{ANNOTATIONS}"))
    if len(found) > 1:
        raise PrepareError(f"{path} holds {len(found)} prepared data sets "
                           f"({', '.join(str(f.relative_to(path)) for f in found)}); give one "
                           f"of them as the dataset_dir")
    return str(found[0]) if found else str(path)


# ---------------------------------------------------------------------------------------------
# Stage 1: decode one video into a shard.


def shard_path(config: PrepareConfig, split: str, video_id: str) -> pathlib.Path:
    return config.work / "shards" / split / f"{video_id}.npz"


def process_video(task: tasks.VideoTask, config: PrepareConfig) -> dict:
    """Decodes the clips of one video into its shard; returns what happened (JSON-able).

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


def _cached_result(task: tasks.VideoTask, config: PrepareConfig) -> dict | None:
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


# ---------------------------------------------------------------------------------------------
# Stage 2: the TFDS builder.


def _builder(config: PrepareConfig, tables: dict[str, ek100.ClipTable], results: list[dict]):
    """A TFDS builder whose examples come from the shards of `config.work`, in CSV order (the
    shard of each video that ``results`` names, with the key they give)."""
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
            return tfds.core.DatasetInfo(builder=self, features=verify.features(),
                                         disable_shuffling=True)  # records in CSV order

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in tables}

        def _generate_examples(self, split):
            keys = {r["video_id"]: r["key"] for r in results if r["split"] == split}
            yield from _examples(config, split, tables[split], keys)

    return Ek100Mir(data_dir=config.output_dir, file_format="array_record")


def _examples(config: PrepareConfig, split: str, table: ek100.ClipTable, keys: dict[str, str]):
    shard_id, frames = None, {}
    for row in range(len(table)):
        video_id = table.video_id[row]
        if video_id != shard_id:  # EK-100 CSVs group clips by video: each shard is read once
            path, frames, shard_id = shard_path(config, split, video_id), {}, video_id
            if keys.get(video_id) is not None:  # None: the video is skipped, a shard is stale
                meta, frames = read_shard(path)
                if meta["key"] != keys[video_id]:
                    raise PrepareError(f"{path}: rewritten while the data set was assembled "
                                       f"(key {meta['key']}, expected {keys[video_id]})")
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


def _write_report(path: pathlib.Path, results: list[dict]) -> None:
    with atomic.writer(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "video_id", "narration_id", "reason"])
        for r in results:
            for nid, reason in r["skipped"]:
                writer.writerow([r["split"], r["video_id"], nid, reason])


def _run_tasks(todo: list[tasks.VideoTask], config: PrepareConfig) -> list[dict]:
    """Processes the tasks without a shard, in parallel; returns every task's result."""
    from tqdm import tqdm
    results = {t: _cached_result(t, config) for t in todo}
    pending = [t for t, r in results.items() if r is None]
    bar = tqdm(total=sum(len(t.clips) for t in todo), unit="clip", desc="decoding",
               disable=not config.progress, dynamic_ncols=True)
    bar.update(sum(len(t.clips) for t, r in results.items() if r is not None))

    def done(task, result):
        results[task] = result
        bar.update(len(task.clips))
        if config.strict and result["skipped"]:
            nid, reason = result["skipped"][0]
            raise PrepareError(f"{task.split} clip {nid} ({task.video_id}): {reason}")

    processes = config.num_workers or os.cpu_count() or 1
    try:
        if processes == 1:
            for task in pending:
                done(task, process_video(task, config))
        else:
            # spawn: workers must not inherit the parent's threads (tqdm, TFDS, JAX).
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(  # no decoding orphans after a kill -9
                    processes, mp_context=ctx, initializer=workers.tie_to_parent) as pool:
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
    return [results[t] for t in todo]


def _assemble(builder, todo: list[tasks.VideoTask], results: list[dict], progress: bool) -> None:
    """Writes the TFDS data set, unless one made from exactly these records is already there:
    the same rows (clip_index), each with the same shard key (its fields, frames, options).
    TFDS's own progress bars show only with ``progress``."""
    import tensorflow_datasets as tfds
    made_from = tasks.digest([[t.split, c.row, c.narration_id, r["key"]]
                              for t, r in zip(todo, results) for written in [set(r["written"])]
                              for c in t.clips if c.narration_id in written])
    stamp = pathlib.Path(builder.data_dir) / "prepared_from.txt"
    current = stamp.is_file() and stamp.read_text() == made_from
    mode = (tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS if current
            else tfds.download.GenerateMode.FORCE_REDOWNLOAD)
    tfds.display_progress_bar(progress)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    if not current:
        atomic.write_text(stamp, made_from)


def _remove_leftovers(config: PrepareConfig) -> None:
    """Removes what a killed preparation leaves, saying so in one line: TFDS's ``incomplete.*``
    folders, the temporaries of atomic writes (shards, report, summary, the data set's files) and
    ``*.tmp.npz`` shards of older versions."""
    data = dataset_dir(config.output_dir, config.num_frames, config.short_side)
    found = sorted(data.parent.glob("incomplete.*"))
    shards = sorted((config.work / "shards").glob("*"))
    for folder in (pathlib.Path(config.output_dir), data, data / ANNOTATIONS, *shards):
        found += atomic.temporaries(folder)
    found += [p for folder in shards for p in sorted(folder.glob("*.tmp.npz"))]
    atomic.remove(found)
    if found:
        print(f"prepare: removed {len(found)} leftover(s) of an interrupted run: "
              f"{', '.join(map(str, found))}", file=sys.stderr, flush=True)


def _summary(config: PrepareConfig, results: list[dict], data, t0: float) -> dict:
    output = pathlib.Path(config.output_dir)
    summary = {
        "dataset_dir": str(data) if data else None,  # None: not assembled
        "clips": {s: sum(len(r["written"]) for r in results if r["split"] == s)
                  for s in config.splits},
        "skipped": {s: sum(len(r["skipped"]) for r in results if r["split"] == s)
                    for s in config.splits},
        "bytes": sum(f.stat().st_size for f in pathlib.Path(data).glob("*array_record*"))
        if data else 0,
        "seconds": round(time.time() - t0, 2),
        "report": str(output / REPORT_FILE),
    }
    atomic.write_json(output / SUMMARY_FILE, summary)
    return summary


def prepare(config: PrepareConfig) -> dict:
    """Runs the whole preparation (resuming from ``config.work``); returns the summary.

    Summary: {'dataset_dir', 'clips': {split: written}, 'skipped': {split: n}, 'bytes',
    'seconds', 'report'}. It is also written to ``<output_dir>/prepare_summary.json``, also when
    skipped clips raise `SkippedClipsError` (then 'dataset_dir' is None).
    """
    t0 = time.time()
    annotation_dir, output = pathlib.Path(config.annotation_dir), pathlib.Path(config.output_dir)
    unknown = [s for s in config.splits if s not in SPLIT_FILES]
    if unknown:
        raise PrepareError(f"unknown split(s) {unknown}; expected some of {list(SPLIT_FILES)}")
    if config.num_frames < 1 or config.short_side < 8:
        raise PrepareError(f"num_frames {config.num_frames} must be >= 1 and short_side "
                           f"{config.short_side} >= 8")
    names = [name for s in config.splits for name in SPLIT_FILES[s]]
    names += [name for name in EXTRA_ANNOTATION_FILES if (annotation_dir / name).is_file()]
    tables = {s: ek100.read_clips(annotation_dir / SPLIT_FILES[s][0]) for s in config.splits}
    for s in config.splits:
        ek100.read_sentences(annotation_dir / SPLIT_FILES[s][1])  # validate before hours of work
    # The files as the tables were read: the data set gets copies of exactly these.
    digests = {name: verify.sha256(annotation_dir / name) for name in names}
    output.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(config)
    todo = [t for s in config.splits for t in tasks.video_tasks(s, tables[s])]
    results = _run_tasks(todo, config)
    _write_report(output / REPORT_FILE, results)
    for s in config.splits:
        if not any(r["written"] for r in results if r["split"] == s):
            raise PrepareError(f"no clip of split {s!r} could be prepared; reasons in "
                               f"{output / REPORT_FILE}")
    skipped = sum(len(r["skipped"]) for r in results)
    if skipped and not config.allow_skipped:
        _summary(config, results, None, t0)
        raise SkippedClipsError(
            f"{skipped} clip(s) skipped, the reasons in {output / REPORT_FILE}; no data set "
            f"written: mend the inputs (a wrong chunk_seconds skips the clips of chunk folders) "
            f"or allow the skipped clips (--allow_skipped) to write it without them")

    builder = _builder(config, tables, results)
    _assemble(builder, todo, results, config.progress)
    target = pathlib.Path(builder.data_dir) / ANNOTATIONS
    for name in names:
        with atomic.path(target / name) as tmp:
            shutil.copyfile(annotation_dir / name, tmp)
            if verify.sha256(tmp) != digests[name]:
                raise PrepareError(f"{annotation_dir / name} changed while the data set was "
                                   f"prepared from it; run the preparation again")
    verify.write_digests(target, {name: (digests[name], annotation_dir / name) for name in names})
    return _summary(config, results, builder.data_dir, t0)


def load_narration_ids(dataset_dir, split: str) -> tuple[str, np.ndarray]:
    """(path, narration_id column) of a prepared split's clip table, its copy checked as
    `load_annotations` does; cheap: no other column is parsed."""
    path = pathlib.Path(dataset_dir) / ANNOTATIONS / SPLIT_FILES[split][0]
    verify.check_copies(path.parent, [path.name])
    return str(path), ek100.read_narration_ids(path)


def load_annotations(dataset_dir, split: str) -> tuple[ek100.ClipTable, ek100.SentenceTable]:
    """The clip and sentence tables of a prepared split (records name their row: ``clip_index``),
    their copies checked against the digests taken at preparation (`verify.check_copies`:
    verify.DatasetError naming the copy and the file it was copied from)."""
    folder = pathlib.Path(dataset_dir) / ANNOTATIONS
    clips_file, sentences_file = SPLIT_FILES[split]
    verify.check_copies(folder, SPLIT_FILES[split])
    return ek100.read_clips(folder / clips_file), ek100.read_sentences(folder / sentences_file)


def check_annotation_dir(dataset_dir, annotation_dir) -> None:
    """Raises verify.DatasetError, naming both files, unless ``annotation_dir`` holds the
    annotation files that the data set was prepared from, unchanged (`verify.check_folder`)."""
    verify.check_folder(pathlib.Path(dataset_dir) / ANNOTATIONS, annotation_dir)
