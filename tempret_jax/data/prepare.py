"""Preparation: a corpus's videos + annotation files -> a TFDS data set (ArrayRecord).

Per clip we store N frames (default 32) at the centres of N equal segments of
[start_timestamp, stop_timestamp], resized to a short side S (default 256) and JPEG-encoded,
with the clip's ids, text, classes and timestamps (`verify.features`). No TensorFlow: frames are
a sequence of JPEG byte strings, which `builder.as_data_source()` returns as ``bytes``.

What is read for each corpus (EK-100 MIR, Ego4D's EgoClip and EgoMCQ, Charades-Ego): its
annotation files, clip tables and video layouts, `tempret_jax.data.corpora`. The sources of a
video and which of their frames a clip takes: `tempret_jax.data.decode`.

Work happens in two stages so that a killed run resumes where it stopped:
  1. decode (`shards.process_video`): one shard file per video in ``<work_dir>/shards/``,
     videos in parallel over a process pool. A shard is reused only if its key matches: the
     digest of all its records depend on, the stored fields of their table rows
     (`tasks.row_digest`), its source's files (path, size, mtime_ns: `decode.source_identity`)
     and the options; a change rebuilds that shard only;
  2. assemble (`builder.assemble`): TFDS writes the records from the shards in table order to
     ``<output_dir>/<corpus>/<config_name>/<VERSION>`` (an ``incomplete.*`` folder renamed at
     the end), redone when any record's digest changed; then the annotation files are copied
     into ``<dataset_dir>/annotations/`` for the pipelines, with their digests
     (`verify.DIGESTS_FILE`; readers check them: `copy_annotations`).
A missing or unreadable video, a missing or undecodable frame or a clip outside its video is
listed in ``<output_dir>/prepare_report.csv`` with the reason and skipped; then nothing is
assembled (`SkippedClipsError`) unless ``allow_skipped``; ``strict`` raises `PrepareError` at
the first. An annotation row the corpus's reader skips (EgoClip's malformed lines, as EgoVLP
skips them) is listed there too, with its ``file:line``, and does not stop the preparation.
The record of a clip keeps its table row in ``clip_index``. A run first removes what a killed
one left (`_remove_leftovers`): one preparation per output folder at a time.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import multiprocessing
import os
import pathlib
import shutil
import sys
import time

import numpy as np

from tempret_jax import atomic
from tempret_jax.data import builder, corpora, ek100, shards, tasks, verify, workers
# Stage 1, looked up here when run so that a test can watch it.
from tempret_jax.data.shards import process_video

SPLIT_FILES = corpora.EK100_MIR.split_files  # EK-100's: {split: (clips CSV, sentences CSV)}
ANNOTATIONS = "annotations"  # folder of the data set that gets the annotation files
REPORT_FILE = "prepare_report.csv"  # in output_dir: split, video_id, narration_id, reason
SUMMARY_FILE = "prepare_summary.json"  # in output_dir: what `prepare` returns
VERSION = builder.VERSION
PrepareError = tasks.PrepareError


class SkippedClipsError(PrepareError):
    """Clips were skipped (the report lists them) and ``allow_skipped`` is off: not assembled."""


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """What `prepare` reads, writes and stores per clip (see the module docstring)."""

    annotation_dir: str  # the corpus's annotation files (`corpora.Corpus.split_files`)
    video_root: str  # the sources, in the corpus's layouts (`corpora.Corpus.find_source`)
    output_dir: str  # the TFDS data set, the report and the summary
    work_dir: str | None = None  # the shards; default <output_dir>/work
    splits: tuple[str, ...] = ("train", "test")
    num_frames: int = 32  # N, frames stored per clip
    short_side: int = 256  # S, pixels of a stored frame's shorter side
    jpeg_quality: int = 90  # of the frames that are re-encoded
    chunk_seconds: int | None = None  # length of chunked videos' chunks; None: the corpus's
    num_workers: int = 0  # decoding processes; 0: all CPU cores
    strict: bool = False  # raise PrepareError at the first skipped clip
    allow_skipped: bool = False  # assemble without the skipped clips (else SkippedClipsError)
    progress: bool = True  # a tqdm bar
    corpus: str = corpora.EK100_MIR.name  # `corpora.CORPORA`

    def __post_init__(self):
        try:
            default = corpora.get(self.corpus).chunk_seconds
        except ValueError as e:
            raise PrepareError(str(e)) from None
        if self.chunk_seconds is None:  # frozen: set once, as if given
            object.__setattr__(self, "chunk_seconds", default)

    @property
    def work(self) -> pathlib.Path:
        return pathlib.Path(self.work_dir or pathlib.Path(self.output_dir) / "work")

    @property
    def config_name(self) -> str:
        return f"frames{self.num_frames}_short{self.short_side}"


def dataset_dir(output_dir, num_frames: int = 32, short_side: int = 256,
                corpus: str = corpora.EK100_MIR.name) -> pathlib.Path:
    """Where `prepare` puts the TFDS data set (open a split with `pipeline.open_split`, which
    checks it before TFDS reads it)."""
    config = PrepareConfig("", "", "", num_frames=num_frames, short_side=short_side,
                           corpus=corpus)
    return pathlib.Path(output_dir) / corpus / config.config_name / VERSION


def find_dataset(path) -> str:
    """The prepared data set at ``path``: ``path`` itself, or the one data set under a
    preparation's output folder (`dataset_dir`'s layout, any corpus), so that the ``--output``
    of tools/prepare.py can be given as it is. Raises PrepareError when the folder holds
    several (naming them: give one) and returns ``path`` unchanged when it holds none."""
    path = pathlib.Path(path)
    if (path / ANNOTATIONS).is_dir():
        return str(path)
    found = sorted(p.parent for name in corpora.CORPORA
                   for p in path.glob(f"{name}/*/*/{ANNOTATIONS}"))
    if len(found) > 1:
        raise PrepareError(f"{path} holds {len(found)} prepared data sets "
                           f"({', '.join(str(f.relative_to(path)) for f in found)}); give one "
                           f"of them as the dataset_dir")
    return str(found[0]) if found else str(path)


# ---------------------------------------------------------------------------------------------
# The driver.


def _write_report(path: pathlib.Path, results: list[dict], bad_rows: dict[str, tuple]) -> None:
    """One row per skipped clip, and one per annotation row skipped (its file:line as reason)."""
    with atomic.writer(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "video_id", "narration_id", "reason"])
        for split, reasons in bad_rows.items():
            writer.writerows([split, "", "", reason] for reason in reasons)
        for r in results:
            for nid, reason in r["skipped"]:
                writer.writerow([r["split"], r["video_id"], nid, reason])


def _run_tasks(todo: list[tasks.VideoTask], config: PrepareConfig) -> list[dict]:
    """Processes the tasks without a shard, in parallel; returns every task's result."""
    from tqdm import tqdm
    results = {t: shards.cached_result(t, config) for t in todo}
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


def _remove_leftovers(config: PrepareConfig) -> None:
    """Removes what a killed preparation leaves, saying so in one line: TFDS's ``incomplete.*``
    folders, the temporaries of atomic writes (shards, report, summary, the data set's files) and
    ``*.tmp.npz`` shards of older versions."""
    data = dataset_dir(config.output_dir, config.num_frames, config.short_side, config.corpus)
    found = sorted(data.parent.glob("incomplete.*"))
    folders = sorted((config.work / "shards").glob("*"))
    for folder in (pathlib.Path(config.output_dir), data, data / ANNOTATIONS, *folders):
        found += atomic.temporaries(folder)
    found += [p for folder in folders for p in sorted(folder.glob("*.tmp.npz"))]
    atomic.remove(found)
    if found:
        print(f"prepare: removed {len(found)} leftover(s) of an interrupted run: "
              f"{', '.join(map(str, found))}", file=sys.stderr, flush=True)


def _summary(config: PrepareConfig, results: list[dict], bad_rows: dict[str, tuple], data,
             t0: float) -> dict:
    output = pathlib.Path(config.output_dir)
    summary = {
        "dataset_dir": str(data) if data else None,  # None: not assembled
        "clips": {s: sum(len(r["written"]) for r in results if r["split"] == s)
                  for s in config.splits},
        "skipped": {s: sum(len(r["skipped"]) for r in results if r["split"] == s)
                    for s in config.splits},
        "bad_rows": {s: len(bad_rows[s]) for s in config.splits},
        "bytes": sum(f.stat().st_size for f in pathlib.Path(data).glob("*array_record*"))
        if data else 0,
        "seconds": round(time.time() - t0, 2),
        "report": str(output / REPORT_FILE),
    }
    atomic.write_json(output / SUMMARY_FILE, summary)
    return summary


def _read_tables(config: PrepareConfig) -> tuple[dict, list[str], dict]:
    """({split: SplitTables}, the annotation files read, {name: sha256}), all validated before
    hours of work; the digests are of the files as the tables were read."""
    corpus, folder = corpora.get(config.corpus), pathlib.Path(config.annotation_dir)
    unknown = [s for s in config.splits if s not in corpus.split_files]
    if unknown:
        raise PrepareError(f"unknown split(s) {unknown} of corpus {corpus.name}; expected some "
                           f"of {list(corpus.split_files)}")
    if config.num_frames < 1 or config.short_side < 8 or config.chunk_seconds < 1:
        raise PrepareError(f"num_frames {config.num_frames} and chunk_seconds "
                           f"{config.chunk_seconds} must be >= 1 and short_side "
                           f"{config.short_side} >= 8")
    names = list(dict.fromkeys(name for s in config.splits for name in corpus.split_files[s]))
    names += [name for name in corpus.extra_files if (folder / name).is_file()]
    tables = {s: corpus.read(folder, s) for s in config.splits}
    return tables, names, {name: verify.sha256(folder / name) for name in names}


def copy_annotations(config: PrepareConfig, data: pathlib.Path, names: list[str],
                     digests: dict[str, str]) -> None:
    """Copies the annotation files ``names`` into ``<data>/annotations/`` and records their
    digests (the end of stage 2); PrepareError if one changed since it was read (``digests``)."""
    source, target = pathlib.Path(config.annotation_dir), data / ANNOTATIONS
    for name in names:
        with atomic.path(target / name) as tmp:
            shutil.copyfile(source / name, tmp)
            if verify.sha256(tmp) != digests[name]:
                raise PrepareError(f"{source / name} changed while the data set was prepared "
                                   f"from it; run the preparation again")
    verify.write_digests(target, {name: (digests[name], source / name) for name in names})


def prepare(config: PrepareConfig, runner=None) -> dict:
    """Runs the whole preparation (resuming from ``config.work``); returns the summary.
    ``runner`` runs stage 1 (``run_tasks(todo, config) -> results``) and stage 2 (as
    `builder.assemble`) elsewhere: `beam_prepare.BeamRunner`; None: on this machine's cores.

    Summary: {'dataset_dir', 'clips': {split: written}, 'skipped': {split: n}, 'bad_rows':
    {split: annotation rows skipped}, 'bytes', 'seconds', 'report'}. It is also written to
    ``<output_dir>/prepare_summary.json``, also when skipped clips raise `SkippedClipsError`
    (then 'dataset_dir' is None).
    """
    t0 = time.time()
    output = pathlib.Path(config.output_dir)
    split_tables, names, digests = _read_tables(config)
    tables = {s: t.clips for s, t in split_tables.items()}
    bad_rows = {s: t.bad_rows for s, t in split_tables.items()}
    output.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(config)
    todo = [t for s in config.splits for t in tasks.video_tasks(s, tables[s])]
    results = (runner.run_tasks if runner else _run_tasks)(todo, config)
    _write_report(output / REPORT_FILE, results, bad_rows)
    if any(bad_rows.values()):
        print(f"prepare: {sum(map(len, bad_rows.values()))} annotation row(s) skipped, each named "
              f"in {output / REPORT_FILE}", file=sys.stderr, flush=True)
    for s in config.splits:
        if not any(r["written"] for r in results if r["split"] == s):
            raise PrepareError(f"no clip of split {s!r} could be prepared; reasons in "
                               f"{output / REPORT_FILE}")
    skipped = sum(len(r["skipped"]) for r in results)
    if skipped and not config.allow_skipped:
        _summary(config, results, bad_rows, None, t0)
        raise SkippedClipsError(
            f"{skipped} clip(s) skipped, the reasons in {output / REPORT_FILE}; no data set "
            f"written: mend the inputs (a wrong chunk_seconds skips the clips of chunk folders) "
            f"or allow the skipped clips (--allow_skipped) to write it without them")
    data = (runner.assemble if runner else builder.assemble)(config, tables, todo, results)
    copy_annotations(config, data, names, digests)
    return _summary(config, results, bad_rows, data, t0)


def _split_files(dataset_dir, split: str) -> tuple[corpora.Corpus, pathlib.Path]:
    """(corpus, annotation copies folder) of a prepared data set, the split's copies checked
    against the digests taken at preparation (`verify.check_copies`)."""
    corpus = corpora.of_dataset(dataset_dir)
    if split not in corpus.split_files:
        raise verify.DatasetError(f"{dataset_dir}: corpus {corpus.name} has no split {split!r}; "
                                  f"expected one of {list(corpus.split_files)}")
    folder = pathlib.Path(dataset_dir) / ANNOTATIONS
    verify.check_copies(folder, corpus.split_files[split])
    return corpus, folder


def load_narration_ids(dataset_dir, split: str) -> tuple[str, np.ndarray]:
    """(path, narration_id column) of a prepared split's clip table, its copy checked as
    `load_annotations` does; cheap for EK-100: no other column is parsed."""
    corpus, folder = _split_files(dataset_dir, split)
    return str(folder / corpus.split_files[split][0]), corpus.narration_ids(folder, split)


def load_annotations(dataset_dir, split: str) -> tuple[ek100.ClipTable, ek100.SentenceTable]:
    """The clip and sentence tables of a prepared split (records name their row: ``clip_index``),
    their copies checked against the digests taken at preparation (`verify.check_copies`:
    verify.DatasetError naming the copy and the file it was copied from). The sentences of a
    corpus other than EK-100 are its split's texts (`corpora`)."""
    corpus, folder = _split_files(dataset_dir, split)
    tables = corpus.read(folder, split)
    return tables.clips, tables.sentences


def check_annotation_dir(dataset_dir, annotation_dir) -> None:
    """Raises verify.DatasetError, naming both files, unless ``annotation_dir`` holds the
    annotation files that the data set was prepared from, unchanged (`verify.check_folder`)."""
    verify.check_folder(pathlib.Path(dataset_dir) / ANNOTATIONS, annotation_dir)
