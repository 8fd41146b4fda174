"""Input throughput: prepared TFDS clips vs decoding the MP4s, and the positive sampler's memory.

  python tools/bench_pipeline.py [--work DIR] [--repeats 5] [--frames 16] [--resolution 224]

1. Generates a SynthKitchens set (default 568x320 at 30 fps, like AVION's 320p re-encodes;
   --video_size / --fps for others, e.g. EK-100's 1920x1080 at 60), 10 clips of 1.5-4.5 s per
   video, and prepares it (32 frames, short side 256).
2. Times, on ONE core (this process), the training transform per clip: T random-offset
   segment frames, random resized crop to R x R, CLIP normalisation, positive sampling and
   tokenisation. "prepared" decodes T JPEGs from the ArrayRecord records; "mp4" decodes the same
   clips' frames from the MP4s with PyAV (seek to the keyframe before, decode forward). The full
   grain pipeline (in-process, batch 8) is timed too. Medians over --repeats passes.
3. Builds `ek100.TrainRelevance` on a full-size synthetic train CSV (67,217 clips drawn from the
   real train sentences' class statistics) and reports its peak allocation (tracemalloc), the
   size it keeps, and the sampling rate.
"""

import argparse
import dataclasses
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np
from PIL import Image

from tempret_jax.data import ek100, pipeline, prepare, synthetic

BENCH_SET = synthetic.SynthConfig(seed=1, num_train_videos=6, num_test_videos=1,
                                  num_participants=3, clips_per_video=10, width=568, height=320,
                                  fps=30, clip_seconds=(1.5, 4.5), gap_seconds=(0.5, 2.0), gop=60)
EK100_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "ek100"


def _mp4_transform(transform: pipeline.TrainTransform, video_root, clips: ek100.ClipTable):
    """The training transform with frames decoded from the MP4s instead of stored JPEGs."""

    def run(row: int, rng: np.random.Generator):
        stored = prepare.sample_times(clips.start_timestamp[row], clips.stop_timestamp[row], 32)
        times = stored[pipeline.segment_indices(32, transform.num_frames, rng)]
        _, path = prepare.find_source(video_root, clips.participant_id[row], clips.video_id[row])
        images = prepare.decode_video_at(path, times)
        box = pipeline.random_resized_crop_box(*images[0].size, rng, transform.crop_scale)
        size = (transform.resolution, transform.resolution)
        video = np.stack([np.asarray(img.resize(size, Image.BILINEAR, box=box)) for img in images])
        sentence, _ = transform.relevance.sample_positive(row, rng)
        text = transform.sentence_text[sentence] if sentence >= 0 else clips.narration[row]
        return transform.normalize(video), pipeline.tokenize([text])[0]

    return run


def _rate(fn, n: int, repeats: int) -> float:
    """Median items/s of ``fn(i, rng)`` over i in range(n), ``repeats`` passes (after a warm-up)."""
    fn(0, np.random.default_rng(0))
    rates = []
    for r in range(repeats):
        rng = np.random.default_rng(r)
        t = time.perf_counter()
        for i in range(n):
            fn(i, rng)
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def throughput(work: pathlib.Path, repeats: int, frames: int, resolution: int,
               videos: synthetic.SynthConfig) -> list[tuple]:
    root = work / f"synth_{videos.width}x{videos.height}_{videos.fps}fps_{videos.num_train_videos}"
    if not (root / synthetic.ANNOTATION_DIR).is_dir():
        synthetic.generate(root, videos)
    summary = prepare.prepare(prepare.PrepareConfig(
        annotation_dir=str(root / "annotations"), video_root=str(root), output_dir=str(root / "prepared"),
        splits=("train", "test"), progress=False))
    dataset = pathlib.Path(summary["dataset_dir"])
    clips, sentences = prepare.load_annotations(dataset, "train")
    relevance = ek100.TrainRelevance.from_tables(clips, sentences)
    transform = pipeline.TrainTransform(relevance, sentences, frames, resolution)
    source = pipeline.open_split(dataset, "train")
    n = len(source)

    prepared_rate = _rate(lambda i, rng: transform.random_map((i, source[i]), rng), n, repeats)
    mp4_rate = _rate(_mp4_transform(transform, root, clips), n, repeats)

    # grain reads ahead with threads: this row uses every core, over 3 epochs per pass.
    batch = 8
    it = iter(pipeline.train_pipeline(dataset, batch, num_frames=frames, resolution=resolution,
                                      process_index=0, process_count=1, relevance=relevance))
    grain_rate = _rate(lambda i, rng: next(it), 3 * n // batch, repeats) * batch
    mp4_bytes = sum(p.stat().st_size for p in root.glob("*/videos/*.MP4"))
    return [
        ("prepared ArrayRecord (transform)", prepared_rate, summary["bytes"] / n),
        ("prepared, grain pipeline (all cores)", grain_rate, summary["bytes"] / n),
        ("MP4 + PyAV seek/decode (transform)", mp4_rate, None),
        ("speed-up prepared / MP4", prepared_rate / mp4_rate, mp4_bytes / n),
    ], n


def _peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sampler_memory(work: pathlib.Path, num_clips: int = 67_217) -> list[tuple]:
    """Run in a fresh process (see main) so that its max RSS is the sampler's own."""
    csv_path = work / "train_full.csv"
    synthetic.synthesize_train_csv(csv_path, EK100_DIR / ek100.TRAIN_SENTENCES_FILE, num_clips)
    clips = ek100.read_clips(csv_path)
    sentences = ek100.read_sentences(EK100_DIR / ek100.TRAIN_SENTENCES_FILE)
    rss_before = _peak_rss_mib()
    tracemalloc.start()
    t = time.perf_counter()
    relevance = ek100.TrainRelevance.from_tables(clips, sentences)
    build = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    kept = sum(v.nbytes for v in vars(relevance).values() if isinstance(v, np.ndarray))
    kept += sum(a.nbytes for labels in (relevance.clip_keys, relevance.sentence_keys)
                for a in (labels.verb, labels.nouns))
    rng = np.random.default_rng(0)
    idx = rng.integers(num_clips, size=20_000)
    t = time.perf_counter()
    for i in idx:
        relevance.sample_positive(int(i), rng)
    rate = len(idx) / (time.perf_counter() - t)
    return [("clips x sentences", f"{num_clips:,} x {len(sentences):,}"),
            ("unique clip keys x sentence keys",
             f"{len(relevance.clip_keys):,} x {len(relevance.sentence_keys):,}"),
            ("positive (clip key, sentence key) pairs", f"{len(relevance.pos_keys):,}"),
            ("peak allocation while building (tracemalloc)", f"{peak / 2**20:.1f} MiB"),
            ("kept by the sampler", f"{kept / 2**20:.1f} MiB"),
            ("build time", f"{build:.2f} s"),
            ("sample_positive", f"{rate:,.0f} samples/s"),
            ("process peak RSS: before building -> after", f"{rss_before:.0f} -> "
             f"{_peak_rss_mib():.0f} MiB")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="folder for the generated data (default: temporary)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--video_size", default="568x320", help="WxH of the generated MP4s")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--videos", type=int, default=6, help="train videos of 10 clips")
    p.add_argument("--sampler_only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(a.work or tmp)
        if a.sampler_only:
            for name, value in sampler_memory(work):
                print(f"| {name:<46} | {value:>18} |")
            return
        width, height = (int(x) for x in a.video_size.split("x"))
        videos = dataclasses.replace(BENCH_SET, width=width, height=height, fps=a.fps,
                                     gop=2 * a.fps, num_train_videos=a.videos)
        rows, n = throughput(work, a.repeats, a.frames, a.resolution, videos)
        print(f"\nMP4s {a.video_size} at {a.fps} fps. Training clips {a.frames} x {a.resolution}"
              f" x {a.resolution}, {n} clips, one core, median of {a.repeats} passes")
        print(f"| {'path':<38} | {'clips/s/core':>12} | {'bytes/clip':>10} |")
        print(f"|{'-' * 40}|{'-' * 14}|{'-' * 12}|")
        for name, rate, size in rows:
            unit = "x" if name.startswith("speed") else ""
            size = f"{size / 1e3:.0f} kB" if size else "-"
            print(f"| {name:<38} | {rate:>11.1f}{unit or ' '} | {size:>10} |")
        print("(bytes/clip on the speed-up row: the MP4s' size per clip)")
        print("\nPositive sampler on a full-size train split (fresh process)", flush=True)
        subprocess.run([sys.executable, __file__, "--work", str(work), "--sampler_only"], check=True)


if __name__ == "__main__":
    main()
