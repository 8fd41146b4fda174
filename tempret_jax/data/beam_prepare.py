"""The preparation (`prepare.prepare`) with its two stages run as Apache Beam pipelines, for
corpora larger than one machine (Ego4D's 3.8M EgoClip clips); the local path stays the default.

  stage 1  <work>/beam/tasks.jsonl (one line per video: its `tasks.VideoTask`) -> Reshuffle ->
           the video's shard (`shards.cached_result`, else `shards.process_video`: a rerun
           skips the finished videos) -> its result, one JSON line, <work>/beam/results-*
  stage 2  TFDS's own Beam path (`tfds.core.GeneratorBasedBuilder` with a PTransform per split,
           `BeamWriter`, array_record): <work>/beam/records-<split>.jsonl (one line per video:
           its key and the `builder.row_fields` of its rows) -> Reshuffle ->
           `builder.video_examples` keyed by clip_index -> the ArrayRecord files. With
           ``disable_shuffling`` TFDS sorts each file's records by key and gives files
           consecutive key ranges, so the records are in table order, as the local path writes
           them: the same records from the same functions, record for record.
A missing or corrupt video is a result like any other (its clips skipped with the reason, in
the report by name; `decode` turns PyAV's errors into reasons), never a failed job. The driver
(tables, report, checks, annotation copies, summary) is `prepare.prepare`'s, on the launching
machine; ``strict`` is checked there after stage 1 (the first skipped clip in table order).

Storage: the shards, videos and data set are read and written with local file APIs (pathlib,
NumPy, PyAV), so annotation_dir, video_root, work_dir and output_dir must be POSIX paths that
the launching machine and every worker see at the same place: a local disk with the
DirectRunner; an NFS share (Filestore, EFS) or a bucket mounted by FUSE (Cloud Storage FUSE,
Mountpoint for Amazon S3) on the workers of Dataflow, Flink or Spark. URLs (gs://, s3://) are
not accepted; TFDS could write there (its epath), but the shards and videos could not be read.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex

from tempret_jax import atomic
from tempret_jax.data import builder, ek100, shards, tasks

NAMESPACE = "tempret_jax.prepare"  # of the Beam counters (videos decoded / reused, clips skipped)
FOLDER = "beam"  # in the work folder: the pipelines' inputs and stage 1's results


def pipeline_options(beam_options: str = "", direct_num_workers: int = 1) -> list[str]:
    """The argument list of Beam's PipelineOptions: ``beam_options`` (a shell-quoted string,
    e.g. "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp") after the
    DirectRunner's defaults, so that an option given there wins: ``direct_num_workers``
    processes (0: one per core), or one thread when 1."""
    if direct_num_workers < 0:
        raise tasks.PrepareError(f"direct_num_workers {direct_num_workers}: expected >= 0")
    mode = "in_memory" if direct_num_workers == 1 else "multi_processing"
    return [f"--direct_num_workers={direct_num_workers}", f"--direct_running_mode={mode}",
            *shlex.split(beam_options)]


@dataclasses.dataclass(frozen=True)
class BeamRunner:
    """Runs stage 1 and stage 2 of `prepare.prepare` (``runner=``) as Beam pipelines with the
    PipelineOptions arguments ``options`` (`pipeline_options`; none: the DirectRunner)."""

    options: tuple[str, ...] = ()

    def __post_init__(self):
        try:
            from apache_beam.options.pipeline_options import PipelineOptions
        except ImportError as e:
            raise tasks.PrepareError(f"the Beam runner needs Apache Beam ({e}): pip install "
                                     f"'tempret-jax[beam]'") from None
        try:  # the options are parsed once here, so that a typo fails before any work
            PipelineOptions(list(self.options)).get_all_options(retain_unknown_options=False)
        except (SystemExit, ValueError) as e:
            raise tasks.PrepareError(f"Beam pipeline options {list(self.options)}: {e}") from None

    def beam_options(self):
        """The PipelineOptions (a new object each time: TFDS changes the one it is given)."""
        from apache_beam.options.pipeline_options import PipelineOptions
        return PipelineOptions(list(self.options))

    def run_tasks(self, todo: list[tasks.VideoTask], config) -> list[dict]:
        """Stage 1: every task's `shards.process_video` result (``todo``'s order), each video's
        shard reused when it is current. ``config`` is a `prepare.PrepareConfig`."""
        import apache_beam as beam
        folder = config.work / FOLDER
        lines = folder / "tasks.jsonl"
        atomic.write_text(lines, "".join(json.dumps([i, *_task_row(t)]) + "\n"
                                         for i, t in enumerate(todo)))
        # An older run's results, and Beam's temporaries of a killed one (beam-temp-results-*).
        atomic.remove(sorted(folder.glob("*results-*")))
        with beam.Pipeline(options=self.beam_options()) as p:
            _ = (p | "ReadTasks" >> beam.io.ReadFromText(str(lines))
                 | "Spread" >> beam.Reshuffle()
                 | "Decode" >> beam.Map(run_task, config)
                 | "WriteResults" >> beam.io.WriteToText(str(folder / "results"),
                                                         file_name_suffix=".jsonl"))
        results = dict(read_results(folder))
        missing = [t.video_id for i, t in enumerate(todo) if i not in results]
        if missing:
            raise tasks.PrepareError(f"{folder}/results-*.jsonl: no result for {len(missing)} "
                                     f"video(s), the first {missing[:3]}; run again")
        ordered = [results[i] for i in range(len(todo))]
        for r in ordered if config.strict else ():  # workers ran on: the first in table order
            if r["skipped"]:
                nid, reason = r["skipped"][0]
                raise tasks.PrepareError(f"{r['split']} clip {nid} ({r['video_id']}): {reason}")
        return ordered

    def assemble(self, config, tables: dict[str, ek100.ClipTable],
                 todo: list[tasks.VideoTask], results: list[dict]) -> pathlib.Path:
        """Stage 2: `builder.assemble` with TFDS writing each split by Beam (`records`)."""
        return builder.assemble(config, tables, todo, results, source=records,
                                beam_options=self.beam_options())


def _task_row(task: tasks.VideoTask) -> list:
    return [task.split, task.video_id, task.participant_id,
            [dataclasses.astuple(c) for c in task.clips]]


def run_task(line: str, config) -> str:
    """Stage 1 of one video: a tasks.jsonl line -> the JSON line [index, result], the result
    of the shard there is when it is current, else of `shards.process_video`."""
    from apache_beam.metrics import Metrics
    index, split, video_id, participant_id, clips = json.loads(line)
    task = tasks.VideoTask(split, video_id, participant_id,
                           tuple(tasks.ClipTask(*c) for c in clips))
    result = shards.cached_result(task, config)
    Metrics.counter(NAMESPACE, "videos reused" if result else "videos decoded").inc()
    result = result or shards.process_video(task, config)
    Metrics.counter(NAMESPACE, "clips skipped").inc(len(result["skipped"]))
    return json.dumps([index, result])


def read_results(folder: pathlib.Path):
    """Yields (task index, result) from the result files of stage 1 in ``folder``."""
    for path in sorted(folder.glob("results-*")):
        with open(path) as f:
            yield from (json.loads(line) for line in f if line.strip())


def records(config, split: str, table: ek100.ClipTable, keys: dict[str, str]):
    """Stage 2 of a split, `builder.examples` as a Beam PTransform: writes the split's
    records-<split>.jsonl (the videos with a shard) and returns the transform that reads it
    and yields (clip_index, record) from each video's shard (`builder.video_examples`)."""
    import apache_beam as beam
    rows: dict[str, list[int]] = {}
    for row, video_id in enumerate(table.video_id):
        rows.setdefault(str(video_id), []).append(row)
    path = config.work / FOLDER / f"records-{split}.jsonl"
    atomic.write_text(path, "".join(
        json.dumps([split, video_id, keys[video_id],
                    [builder.row_fields(table, row) for row in video_rows]]) + "\n"
        for video_id, video_rows in rows.items() if keys.get(video_id) is not None))
    return (beam.io.ReadFromText(str(path)) | "Spread" >> beam.Reshuffle()
            | "Records" >> beam.FlatMap(video_records, config))


def video_records(line: str, config):
    """A records-<split>.jsonl line -> the video's (clip_index, record) pairs."""
    return builder.video_examples(config, *json.loads(line))
