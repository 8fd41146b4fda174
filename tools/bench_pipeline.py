"""Input throughput: prepared TFDS clips vs decoding the MP4s, and the positive sampler's memory.

  python tools/bench_pipeline.py [--work DIR] [--repeats 5] [--frames 16] [--resolution 224]
      [--video_size 568x320] [--fps 30] [--gop FRAMES] [--layout mp4|chunked]
      [--durations synth|ek100] [--tower vit_b16]

1. Generates a SynthKitchens set (default 568x320 at 30 fps, like AVION's 320p re-encodes;
   --video_size / --fps for others, e.g. EK-100's 1920x1080 at 60), 10 clips of 1.5-4.5 s per
   video, keyframes every --gop frames (default 2 s), one file per video or (--layout chunked)
   AVION's 15-second chunks. --durations ek100 re-times the train clips to the durations of
   the EK-100 MIR test clips (see `ek100_durations`). Prepares the train split (32 frames,
   short side 256).
2. Times, on ONE core (this process), the host's training transform per clip: T random-offset
   segment frames, a random resized crop box cut out onto uint8 canvases (`crops`: the
   resampling to R x R and the CLIP normalisation run on the device, in the train step),
   positive sampling and its tokens. "prepared" decodes T JPEGs from the ArrayRecord records
   (`pipeline.TrainTransform`); "mp4" decodes the same clips' frames from the MP4s with PyAV
   (`decode.decode_at`: seek to the keyframe before, decode forward; a new seek only when
   the next frame is more than max(2 s, one keyframe interval) ahead, so a seek never lands
   behind the decoder) and runs the same crop and sampling code; the two alternate, one pass
   each per round, and the speed-up is the median of the rounds' ratios. The full grain pipeline
   (in-process, batch 8, grain's read-ahead threads on every core) is timed too. Medians over
   --repeats passes. A per-stage profile of the prepared path follows (each stage timed on its
   own; the transform streams one frame at a time through them), with, for comparison, what
   resampling + normalising on the host with PIL would cost, the device crop's time with this
   CPU as the device and its FLOPs next to a --tower video tower's train step.
3. Builds `ek100.TrainRelevance` on a full-size synthetic train CSV (67,217 clips drawn from the
   real train sentences' class statistics) and reports its peak allocation (tracemalloc), the
   size it keeps, and the sampling rate.
"""

import argparse
import csv
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

from tempret_jax import atomic
from tempret_jax.data import crops, decode, ek100, pipeline, prepare, synthetic

BENCH_SET = synthetic.SynthConfig(seed=1, num_train_videos=6, num_test_videos=1,
                                  num_participants=3, clips_per_video=10, width=568, height=320,
                                  fps=30, clip_seconds=(1.5, 4.5), gap_seconds=(0.5, 2.0), gop=60)
EK100_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "ek100"
STORED_FRAMES = 32  # prepare's default
HOST_STAGE = "(for comparison) PIL resize + normalise on the host"
DEVICE_STAGE = "(on the device) crops.resized_crops on this CPU"


def ek100_durations(n: int) -> np.ndarray:
    """n clip durations (s) at the quantiles (k + 0.5) / n of EK-100's 9,668 MIR test clips.

    Their mean is 3.7 s and median 2.0 s, with a long tail (95 %: 11.9 s); n = 60 reaches 30 s.
    """
    clips = ek100.read_clips(EK100_DIR / ek100.TEST_CLIPS_FILE)
    durations = np.asarray(clips.stop_timestamp) - np.asarray(clips.start_timestamp)
    return np.quantile(durations, (np.arange(n) + 0.5) / n)


def _timestamp(seconds: float) -> str:
    centis = int(round(seconds * 100))
    return f"{centis // 360000:02d}:{centis // 6000 % 60:02d}:{centis // 100 % 60:02d}.{centis % 100:02d}"


def retime_train_clips(annotation_dir: pathlib.Path, fps: int, seed: int = 0) -> None:
    """Gives the train clips EK-100's durations (`ek100_durations`), each at a random place in
    its own video; narrations and classes stay (throughput does not look at the content)."""
    path = annotation_dir / ek100.TRAIN_CLIPS_FILE
    with open(path, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    with open(annotation_dir / synthetic.VIDEO_INFO_FILE, newline="", encoding="utf-8") as f:
        length = {r["video_id"]: float(r["duration"]) for r in csv.DictReader(f)}
    rng = np.random.default_rng(seed)
    durations = rng.permutation(ek100_durations(len(rows)))
    col = {name: header.index(name) for name in ek100.CLIP_COLUMNS}
    for row, d in zip(rows, durations):
        video_length = length[row[col["video_id"]]] - 2 / fps  # keep the last frame inside
        d = min(round(float(d), 2), video_length)
        start = round(float(rng.uniform(0, video_length - d)), 2)
        for name, value in (("narration_timestamp", _timestamp(start)),
                            ("start_timestamp", _timestamp(start)),
                            ("stop_timestamp", _timestamp(start + d)),
                            ("start_frame", int(start * fps) + 1),
                            ("stop_frame", int((start + d) * fps) + 1)):
            row[col[name]] = value
    with atomic.writer(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def _mp4_transform(transform: pipeline.TrainTransform, video_root, clips: ek100.ClipTable,
                   chunk_seconds: int, seek_gap: float, short_side: int):
    """The training transform with frames decoded from the MP4s instead of stored JPEGs."""
    canvas = crops.canvas_size(short_side, transform.resolution)

    def run(row: int, rng: np.random.Generator):
        stored = decode.sample_times(clips.start_timestamp[row], clips.stop_timestamp[row],
                                      STORED_FRAMES)
        times = stored[pipeline.segment_indices(STORED_FRAMES, transform.num_frames, rng)]
        kind, path = decode.find_source(video_root, clips.participant_id[row], clips.video_id[row])
        images = decode.decode_at(kind, path, times, chunk_seconds, seek_gap, as_array=True)
        clip = pipeline.cut_crops(images, transform.num_frames, rng, transform.resolution,
                                  transform.crop_scale, canvas)
        tokens, _, _ = transform.positive(row, clips.narration[row], rng)
        return clip, tokens

    return run


def _pass_rates(fns, n: int, repeats: int) -> list[list[float]]:
    """items/s of each ``fn(i, rng)`` over i in range(n): ``repeats`` rounds, each one pass of
    every fn in turn (after a warm-up), so that a slow spell of the machine hits all of them."""
    for fn in fns:
        fn(0, np.random.default_rng(0))
    rates = [[] for _ in fns]
    for r in range(repeats):
        for fn, out in zip(fns, rates):
            rng = np.random.default_rng(r)
            t = time.perf_counter()
            for i in range(n):
                fn(i, rng)
            out.append(n / (time.perf_counter() - t))
    return rates


def _rate(fn, n: int, repeats: int) -> float:
    """Median items/s of ``fn(i, rng)`` over i in range(n), ``repeats`` passes."""
    return statistics.median(_pass_rates([fn], n, repeats)[0])


def stage_profile(transform: pipeline.TrainTransform, source, repeats: int) -> dict[str, float]:
    """Median ms per clip of each stage of the prepared path, each stage timed on its own.

    The last entry is not a stage: what resampling and normalising the crop on the host with
    PIL and NumPy (the earlier contract, `HOST_STAGE`) costs on the same frames.
    """
    n, size = len(source), (transform.resolution, transform.resolution)
    stages = ("record read", "JPEG decode", "crop window copy", "positive + tokens", HOST_STAGE)
    normalize = pipeline.Normalize()
    runs = {s: [] for s in stages}
    for r in range(repeats):
        rng = np.random.default_rng(r)
        spent = dict.fromkeys(stages, 0.0)
        for i in range(n):
            t0 = time.perf_counter()
            record = source[i]
            frames = record["frames"]
            indices = pipeline.segment_indices(len(frames), transform.num_frames, rng)
            t1 = time.perf_counter()
            images = [pipeline.decode_jpeg(frames[j]) for j in indices]
            t2 = time.perf_counter()
            pipeline.cut_crops(images, transform.num_frames, rng, transform.resolution,
                               transform.crop_scale, transform.canvas)
            t3 = time.perf_counter()
            transform.positive(int(record["clip_index"]), record["narration"], rng)
            t4 = time.perf_counter()
            pil_images = [Image.fromarray(img) for img in images]  # not timed: PIL decodes to these
            t4b = time.perf_counter()
            box = crops.random_resized_crop_box(*pil_images[0].size, rng, transform.crop_scale)
            video = np.empty((len(images), *size, 3), np.float32)
            for t, img in enumerate(pil_images):
                normalize(np.asarray(img.resize(size, Image.BILINEAR, box=box)), out=video[t])
            t5 = time.perf_counter()
            for s, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4b)):
                spent[s] += dt
        for s in stages:
            runs[s].append(1e3 * spent[s] / n)
    return {s: statistics.median(v) for s, v in runs.items()}


def device_crop(transform: pipeline.TrainTransform, source, batch: int,
                repeats: int) -> tuple[float, float]:
    """`crops.resized_crops` jitted with this CPU as the device, on a batch of clips:
    (median ms per clip, GFLOP per clip from XLA's cost analysis)."""
    import jax
    clips = [transform.random_map((i, source[i]), np.random.default_rng(i)) for i in range(batch)]
    args = [np.stack([c[k] for c in clips]) for k in pipeline.CROP_KEYS]
    fn = jax.jit(lambda *a: crops.resized_crops(*a, transform.resolution))
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    fn(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times) / batch, float(cost["flops"]) / 1e9 / batch


def tower_gflop(preset: str, frames: int, resolution: int) -> float:
    """GFLOP per clip of a train step's video tower (forward + backward, AVION's joint
    attention over all frames) for a CLIP preset, from XLA's cost analysis (nothing runs)."""
    import jax
    import jax.numpy as jnp
    from tempret_jax.models import retrieval
    config = retrieval.model_config(preset)
    config.vision.update(num_frames=frames, image_size=resolution)
    model = retrieval.RetrievalModel.from_config(config)
    video = jax.ShapeDtypeStruct((1, frames, resolution, resolution, 3), jnp.float32)
    params = jax.eval_shape(lambda v: model.init(jax.random.key(0), v, method=model.encode_video),
                            video)

    def loss(p, v):
        return jnp.sum(model.apply(p, v, method=model.encode_video)["features"])

    cost = jax.jit(jax.grad(loss)).lower(params, video).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / 1e9


def throughput(work: pathlib.Path, repeats: int, frames: int, resolution: int,
               videos: synthetic.SynthConfig, durations: str):
    root = work / (f"synth_{videos.width}x{videos.height}_{videos.fps}fps_{videos.num_train_videos}"
                   f"_{videos.layout}_gop{videos.gop}_{durations}")
    if not (root / synthetic.ANNOTATION_DIR).is_dir():
        synthetic.generate(root, videos)
        if durations == "ek100":
            retime_train_clips(root / synthetic.ANNOTATION_DIR, videos.fps)
    summary = prepare.prepare(prepare.PrepareConfig(
        annotation_dir=str(root / "annotations"), video_root=str(root), output_dir=str(root / "prepared"),
        splits=("train",), num_frames=STORED_FRAMES, chunk_seconds=videos.chunk_seconds,
        progress=False))
    dataset = pathlib.Path(summary["dataset_dir"])
    clips, sentences = prepare.load_annotations(dataset, "train")
    relevance = ek100.TrainRelevance.from_tables(clips, sentences)
    source = pipeline.open_split(dataset, "train")
    transform = pipeline.TrainTransform(relevance, sentences, frames, resolution,
                                        pipeline.stored_short_side(source))
    n = len(source)

    seek_gap = max(2.0, videos.gop / videos.fps)
    mp4 = _mp4_transform(transform, root, clips, videos.chunk_seconds, seek_gap,
                         min(videos.width, videos.height))
    prepared_rates, mp4_rates = _pass_rates(
        [lambda i, rng: transform.random_map((i, source[i]), rng), mp4], n, repeats)
    prepared_rate, mp4_rate = statistics.median(prepared_rates), statistics.median(mp4_rates)
    speedup = statistics.median(p / m for p, m in zip(prepared_rates, mp4_rates))
    stages = stage_profile(transform, source, repeats)
    stages[DEVICE_STAGE], device_gflop = device_crop(transform, source, 8, repeats)

    # grain reads ahead with 16 threads: this row uses every core. Its first batches all finish
    # together after a few seconds and the next ~16 are then free, so 32 batches are drained
    # before timing passes of >= 48 batches. Last, as the threads keep reading ahead.
    batch = 8
    it = iter(pipeline.train_pipeline(dataset, batch, num_frames=frames, resolution=resolution,
                                      process_index=0, process_count=1, relevance=relevance))
    for _ in range(32):
        next(it)
    grain_rate = _rate(lambda i, rng: next(it), max(3 * n // batch, 48), repeats) * batch
    train_videos = set(clips.video_id)
    mp4_bytes = sum(f.stat().st_size for f in root.glob("*/videos/**/*.MP4")
                    if f.is_file() and f.relative_to(root).parts[2].split(".")[0] in train_videos)
    rows = [
        ("prepared ArrayRecord (transform)", prepared_rate, summary["bytes"] / n),
        ("prepared, grain pipeline (all cores)", grain_rate, summary["bytes"] / n),
        ("MP4 + PyAV seek/decode (transform)", mp4_rate, None),
        ("speed-up prepared / MP4 (median of rounds)", speedup, None),
    ]
    durations_s = np.asarray(clips.stop_timestamp) - np.asarray(clips.start_timestamp)
    facts = {"clips": n, "mean clip s": durations_s.mean(), "median clip s": np.median(durations_s),
             "max clip s": durations_s.max(), "MP4 kB/clip": mp4_bytes / 1e3 / n,
             "device GFLOP/clip": device_gflop}
    return rows, facts, stages


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
    p.add_argument("--gop", type=int, default=None, help="keyframe interval (default 2 s)")
    p.add_argument("--layout", choices=("mp4", "chunked"), default="mp4",
                   help="one MP4 per video, or AVION's folders of 15-second chunks")
    p.add_argument("--durations", choices=("synth", "ek100"), default="synth",
                   help="SynthKitchens' 1.5-4.5 s clips, or EK-100 MIR's clip durations")
    p.add_argument("--videos", type=int, default=6, help="train videos of 10 clips")
    p.add_argument("--no_sampler", action="store_true", help="skip the positive sampler part")
    p.add_argument("--tower", default="vit_b16",
                   help="CLIP preset whose video tower the device crop's FLOPs are compared with "
                        "('' to skip)")
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
                                     gop=a.gop or 2 * a.fps, num_train_videos=a.videos,
                                     layout=a.layout)
        rows, facts, stages = throughput(work, a.repeats, a.frames, a.resolution, videos,
                                         a.durations)
        print(f"\nMP4s {a.video_size} at {a.fps} fps, keyframe every {videos.gop} frames, layout "
              f"{a.layout}; clips: {a.durations} durations (mean {facts['mean clip s']:.2f} s, "
              f"median {facts['median clip s']:.2f} s, max {facts['max clip s']:.1f} s); "
              f"{facts['MP4 kB/clip']:.0f} kB of MP4 per clip.\nTraining clips {a.frames} x "
              f"{a.resolution} x {a.resolution}, {facts['clips']} clips, one core, median of "
              f"{a.repeats} passes")
        print(f"| {'path':<44} | {'clips/s/core':>12} | {'bytes/clip':>10} |")
        print(f"|{'-' * 46}|{'-' * 14}|{'-' * 12}|")
        for name, rate, size in rows:
            unit = "x" if name.startswith("speed") else ""
            size = f"{size / 1e3:.0f} kB" if size else "-"
            print(f"| {name:<44} | {rate:>11.1f}{unit or ' '} | {size:>10} |")
        print("\nPrepared path per stage, ms per clip (each stage timed on its own)")
        host = {k: v for k, v in stages.items() if k not in (HOST_STAGE, DEVICE_STAGE)}
        for name, ms in [*host.items(), ("sum", sum(host.values()))]:
            print(f"| {name:<52} | {ms:>6.2f} |")
        for name in (HOST_STAGE, DEVICE_STAGE):
            print(f"| {name:<52} | {stages[name]:>6.2f} |", flush=True)
        crop_gflop = facts["device GFLOP/clip"]
        print(f"(the device crop: {crop_gflop:.2f} GFLOP per clip, XLA cost analysis)", flush=True)
        if a.tower:
            tower = tower_gflop(a.tower, a.frames, a.resolution)
            print(f"({a.tower} video tower, forward + backward: {tower:.0f} GFLOP per clip; the "
                  f"crop adds {100 * crop_gflop / tower:.2f} %)", flush=True)
        if not a.no_sampler:
            print("\nPositive sampler on a full-size train split (fresh process)", flush=True)
            subprocess.run([sys.executable, __file__, "--work", str(work), "--sampler_only"],
                           check=True)


if __name__ == "__main__":
    main()
