"""Prepares EK-100 MIR (or SynthKitchens) clips into a TFDS ArrayRecord data set.

  python tools/prepare_ek100.py --annotations DIR --videos ROOT --output OUT \\
      [--splits train,test] [--num_frames 32] [--short_side 256] [--workers 8] [--strict]
      [--allow_skipped]

ROOT holds <participant>/videos/<video_id>.MP4 (file, or AVION's folder of 15 s chunks) or
<participant>/rgb_frames/<video_id>/. A killed run resumes where it stopped when started again
with the same arguments. Skipped clips are listed in OUT/prepare_report.csv; if there are any,
the data set is written only with --allow_skipped (else the exit status is 1, the count and the
report named; a rerun with --allow_skipped reuses the decoded videos).
"""

import argparse
import json
import sys

from tempret_jax.data import prepare


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True, help="folder with the EK-100 MIR CSVs")
    p.add_argument("--videos", required=True, help="root of <participant>/videos or rgb_frames")
    p.add_argument("--output", required=True, help="output folder (TFDS data_dir)")
    p.add_argument("--work_dir", default=None, help="per-video shards (default OUTPUT/work)")
    p.add_argument("--splits", default="train,test")
    p.add_argument("--num_frames", type=int, default=32)
    p.add_argument("--short_side", type=int, default=256)
    p.add_argument("--jpeg_quality", type=int, default=90)
    p.add_argument("--chunk_seconds", type=int, default=15, help="length of AVION's chunks")
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad video or clip")
    p.add_argument("--allow_skipped", action="store_true",
                   help="write the data set without the clips that could not be prepared")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    config = prepare.PrepareConfig(
        annotation_dir=a.annotations, video_root=a.videos, output_dir=a.output,
        work_dir=a.work_dir, splits=tuple(s for s in a.splits.split(",") if s),
        num_frames=a.num_frames, short_side=a.short_side, jpeg_quality=a.jpeg_quality,
        chunk_seconds=a.chunk_seconds, num_workers=a.workers, strict=a.strict,
        allow_skipped=a.allow_skipped, progress=not a.no_progress)
    try:
        summary = prepare.prepare(config)
    except (prepare.PrepareError, prepare.ek100.AnnotationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
