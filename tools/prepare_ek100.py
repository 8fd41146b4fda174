"""Prepares EK-100 MIR (or SynthKitchens) clips into a TFDS ArrayRecord data set: tools/prepare.py
with --corpus ek100_mir.

  python tools/prepare_ek100.py --annotations DIR --videos ROOT --output OUT \\
      [--splits train,test] [--num_frames 32] [--short_side 256] [--workers 8] [--strict]
      [--allow_skipped]

ROOT holds <participant>/videos/<video_id>.MP4 (file, or AVION's folder of 15 s chunks) or
<participant>/rgb_frames/<video_id>/. A killed run resumes where it stopped when started again
with the same arguments. Skipped clips are listed in OUT/prepare_report.csv; if there are any,
the data set is written only with --allow_skipped (else the exit status is 1, the count and the
report named; a rerun with --allow_skipped reuses the decoded videos).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # tools/prepare.py
import prepare as prepare_tool  # noqa: E402

if __name__ == "__main__":
    sys.exit(prepare_tool.main(corpus="ek100_mir", description=__doc__))
