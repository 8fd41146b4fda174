"""Prepares a corpus's clips into a TFDS ArrayRecord data set (tempret_jax.data.prepare).

  python tools/prepare.py --corpus ek100_mir|ego4d|charades_ego --annotations DIR \\
      --videos ROOT --output OUT [--splits train,test] [--num_frames 32] [--short_side 256]
      [--chunk_seconds S] [--workers 8] [--strict] [--allow_skipped]
      [--runner beam [--beam_options="--runner=DataflowRunner ..."] [--direct_num_workers 8]]

Annotations and videos per corpus (tempret_jax.data.corpora):
  ek100_mir     EPIC_100_retrieval_{train,test}[_sentence].csv; ROOT holds
                <participant>/videos/<video_id>.MP4 (file, or AVION's folder of 15 s chunks)
                or <participant>/rgb_frames/<video_id>/
  ego4d         egoclip.csv (train), egomcq.json (test); ROOT holds <video_uid>/<i>.mp4
                (EgoVLP's 600 s chunks), <video_uid>.mp4/<start>.mp4 (AVION's chunks: give
                --chunk_seconds 300) or <video_uid>.mp4
  charades_ego  CharadesEgo_v1_{train,test}_only1st.csv and Charades_v1_classes.txt; ROOT
                holds <id>.mp4
The data set is OUT/<corpus>/frames<N>_short<S>/1.0.0. A killed run resumes where it stopped
when started again with the same arguments. Skipped clips and skipped annotation rows are
listed in OUT/prepare_report.csv; if clips were skipped, the data set is written only with
--allow_skipped (else the exit status is 1, the count and the report named; a rerun with
--allow_skipped reuses the decoded videos).

--runner beam runs the decoding and the writing as Apache Beam pipelines (pip install
'tempret-jax[beam]'; tempret_jax.data.beam_prepare): on this machine with the DirectRunner
(--direct_num_workers processes, 0: one per core), or on Dataflow, Flink or Spark with their
--beam_options. All paths must then be POSIX paths that every worker sees at the same place
(NFS, a FUSE-mounted bucket).
"""

import argparse
import json
import sys

from tempret_jax.data import corpora, prepare


def main(argv=None, corpus: str | None = None, description: str = __doc__) -> int:
    """Parses ``argv`` and prepares; ``corpus`` fixes the corpus (no --corpus option then)."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if corpus is None:
        p.add_argument("--corpus", required=True, choices=list(corpora.CORPORA))
    p.add_argument("--annotations", required=True, help="folder with the annotation files")
    p.add_argument("--videos", required=True, help="root of the videos (the corpus's layouts)")
    p.add_argument("--output", required=True, help="output folder (TFDS data_dir)")
    p.add_argument("--work_dir", default=None, help="per-video shards (default OUTPUT/work)")
    p.add_argument("--splits", default="train,test")
    p.add_argument("--num_frames", type=int, default=32)
    p.add_argument("--short_side", type=int, default=256)
    p.add_argument("--jpeg_quality", type=int, default=90)
    p.add_argument("--chunk_seconds", type=int, default=None,
                   help="length of chunked videos' chunks (default: the corpus's, 15 s for "
                        "EK-100's AVION chunks, 600 s for EgoVLP's Ego4D chunks)")
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad video or clip")
    p.add_argument("--allow_skipped", action="store_true",
                   help="write the data set without the clips that could not be prepared")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--runner", choices=["local", "beam"], default="local",
                   help="local: a process pool (--workers); beam: Apache Beam pipelines")
    p.add_argument("--beam_options", default="",
                   help="Beam pipeline options, one shell-quoted string given with '=': "
                        "--beam_options=\"--runner=FlinkRunner ...\" (--runner beam)")
    p.add_argument("--direct_num_workers", type=int, default=0,
                   help="DirectRunner processes (--runner beam; 0: one per core)")
    a = p.parse_args(argv)
    try:
        config = prepare.PrepareConfig(
            annotation_dir=a.annotations, video_root=a.videos, output_dir=a.output,
            work_dir=a.work_dir, splits=tuple(s for s in a.splits.split(",") if s),
            num_frames=a.num_frames, short_side=a.short_side, jpeg_quality=a.jpeg_quality,
            chunk_seconds=a.chunk_seconds, num_workers=a.workers, strict=a.strict,
            allow_skipped=a.allow_skipped, progress=not a.no_progress,
            corpus=corpus or a.corpus)
        runner = None
        if a.runner == "beam":
            from tempret_jax.data import beam_prepare
            runner = beam_prepare.BeamRunner(tuple(beam_prepare.pipeline_options(
                a.beam_options, a.direct_num_workers)))
        summary = prepare.prepare(config, runner)
    except (prepare.PrepareError, prepare.ek100.AnnotationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
