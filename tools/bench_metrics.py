"""Times EK-100 MIR metrics on the real test split: the official algorithm (twice: plainly, and
by the released code's steps), the previous project path and the current one, side by side in
one run.

    python tools/bench_metrics.py [--annotation_dir tests/data/ek100] [--repeats 5]
        [--old_commit 21c286f3e026f735a398ffcfb01f789550c13f11]

Random similarities (float32, a new seed per repeat) against the real 9,668 x 3,842 relevance;
every call computes both metrics in both directions. Each repeat runs the four in turn on the
same matrix, so a load that comes and goes weighs on all of them. The official algorithm is
`metrics.reference_mir_metrics` (the official definition written plainly: a stable argsort of
every row, the relevances in that order, cumulative sums over the dense ranked matrix); "the
official code's steps" (`official_steps`) computes the same by the released evaluation code's
sequence of operations, three argsorts and a sort of the full matrix per direction. The
previous path is tempret_jax/metrics.py as it was at ``--old_commit`` (read with `git show`;
the default is the last one that sorted every row, by packed uint64 keys).
Before the repeats, the current path runs once on a small matrix: its numba kernels compile
then, or load from numba's cache, and the seconds that took are printed apart.
Prints the median, min and max wall seconds of each, the current path's speed-up over the
others, the median CPU seconds (all threads: the work done, which a shared machine's load
moves less than the wall time) and their ratio, and the largest difference of each metric
from the official algorithm's (percentage points), so it also checks that they agree.
Last, the host: its CPU, and how long NumPy sorts one direction's uint64 keys (what the
official algorithm and the previous path spend most of their time on; NumPy's AVX-512 sort is
2.7x slower than its AVX2 one on AMD Zen 4, for instance: BENCHMARKS.md).
"""

import argparse
import os
import pathlib
import platform
import statistics
import subprocess
import time
import types

import numba
import numpy as np

from tempret_jax import metrics
from tempret_jax.data import ek100

REPO = pathlib.Path(__file__).resolve().parents[1]
# tempret_jax/metrics.py before the counting kernels: rows sorted by packed uint64 keys.
OLD_COMMIT = "21c286f3e026f735a398ffcfb01f789550c13f11"


def old_metrics(commit: str) -> types.ModuleType:
    """tempret_jax/metrics.py at ``commit`` as a module of its own."""
    source = subprocess.run(["git", "show", f"{commit}:tempret_jax/metrics.py"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("metrics_at_" + commit[:8])
    exec(compile(source, f"{commit[:8]}:tempret_jax/metrics.py", "exec"), module.__dict__)
    return module


def official_steps(sim: np.ndarray, rel: np.ndarray) -> dict[str, dict[str, float]]:
    """EK-100 MIR mAP and nDCG (percent) by the released evaluation code's sequence of NumPy
    operations, written here independently: JPoSE's src/evaluation/mAP.py and NDCG.py, which
    AVION (avion/utils/evaluation_ek100mir.py) and SMS-Loss evaluate with. Per direction it
    takes three argsorts and one sort of the full matrix where `metrics.reference_mir_metrics`
    takes one: mAP argsorts -sim and gathers both sim and rel in that order; nDCG sorts rel for
    the k mask, argsorts rel for the ideal DCG and sim for the DCG, each gathered through full
    index matrices against a full matrix of discounts. sim: (V, T), rel: (V, T)."""

    def average_precision(s, r):
        order = np.argsort(-s, axis=1)
        rows = np.arange(s.shape[0])[:, None]
        _ = s[rows, order]  # the released code gathers the ranked similarities too
        ranked = r[rows, order]
        hits = ranked == 1
        found = np.where(hits, np.cumsum(ranked, axis=1), 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.mean(np.sum(found / np.arange(1, s.shape[1] + 1), axis=1) / hits.sum(1))

    def dcg(s, r, top_k):
        descending = np.argsort(s, axis=1)[:, ::-1]
        discounts = np.repeat(np.log2(np.arange(s.shape[1]) + 2)[None], s.shape[0], axis=0)
        rows = np.repeat(np.arange(s.shape[0])[:, None], s.shape[1], axis=1)
        return np.sum(r[rows, descending] * top_k / discounts, axis=1)

    def ndcg(s, r):
        top_k = (np.sort(r, axis=1)[:, ::-1] > 0).astype(int)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.mean(dcg(s, r, top_k) / dcg(r, r, top_k))

    out = {}
    for name, fn in (("mAP", average_precision), ("nDCG", ndcg)):
        v2t, t2v = 100 * fn(sim, rel), 100 * fn(sim.T, rel.T)
        out[name] = {"v2t": v2t, "t2v": t2v, "avg": (v2t + t2v) / 2}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation_dir", default="tests/data/ek100")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--old_commit", default=OLD_COMMIT)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    rel, _, _ = ek100.load_test_relevance(args.annotation_dir)
    start = time.perf_counter()
    small = np.ascontiguousarray(rel[:40, :30])  # the repeats' types and layouts, small
    metrics.mir_metrics(np.random.default_rng(0).standard_normal(small.shape, np.float32), small)
    first_call = time.perf_counter() - start
    paths = {"official algorithm": metrics.reference_mir_metrics,
             "official code's steps": official_steps,
             f"previous ({args.old_commit[:8]})": old_metrics(args.old_commit).mir_metrics,
             "current": metrics.mir_metrics}
    times = {name: [] for name in paths}
    cpu = {name: [] for name in paths}
    worst = {name: {"mAP": 0.0, "nDCG": 0.0} for name in paths}
    for seed in range(args.repeats):
        sim = np.random.default_rng(seed).standard_normal(rel.shape).astype(np.float32)
        results = {}
        for name, fn in paths.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name] = fn(sim, rel)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        reference = results["official algorithm"]
        for name, result in results.items():
            for m in ("mAP", "nDCG"):
                worst[name][m] = max(worst[name][m], *(abs(result[m][d] - reference[m][d])
                                                       for d in ("v2t", "t2v", "avg")))

    print(f"EK-100 MIR test split {rel.shape[0]} x {rel.shape[1]}, {args.repeats} repeats, "
          f"random float32 similarities, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    print(f"{'implementation':<22}{'median s':>10}{'min s':>8}{'max s':>8}{'speed-up':>10}"
          f"{'cpu s':>8}{'cpu ratio':>10}{'max |d mAP|':>13}{'max |d nDCG|':>14}")
    current = statistics.median(times["current"])
    current_cpu = statistics.median(cpu["current"])
    for name, ts in times.items():
        print(f"{name:<22}{statistics.median(ts):>10.3f}{min(ts):>8.3f}{max(ts):>8.3f}"
              f"{statistics.median(ts) / current:>9.1f}x{statistics.median(cpu[name]):>8.2f}"
              f"{statistics.median(cpu[name]) / current_cpu:>9.1f}x"
              f"{worst[name]['mAP']:>13.1e}{worst[name]['nDCG']:>14.1e}")
    print(metrics.format_table(results["current"]))
    print(f"the current path's first calls (numba compiling its kernels or loading them from "
          f"its cache): {first_call:.2f} s")
    print(f"host: {cpu_model()}; NumPy {np.__version__}, numba {numba.__version__}, "
          f"NPY_DISABLE_CPU_FEATURES="
          f"{os.environ.get('NPY_DISABLE_CPU_FEATURES', '')!r}; NumPy's sort of one direction's "
          f"{rel.shape[0]} x {rel.shape[1]} uint64 keys (min of 3): {sort_seconds(rel.shape):.3f} s")


def cpu_model() -> str:
    """The CPU's model name, family and model numbers (Linux), else what `platform` says."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    info = dict(line.split(":", 1) for line in lines if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model "
            f"{info.get('model', '?')})")


def sort_seconds(shape: tuple[int, int]) -> float:
    """Seconds NumPy takes to sort random uint64 keys of ``shape`` row by row, in place: the
    previous path's largest cost, and the one that differs most between CPUs (its SIMD sort)."""
    keys = np.random.default_rng(0).integers(0, 2 ** 63, size=shape, dtype=np.uint64)
    best = float("inf")
    for _ in range(3):
        copy = keys.copy()
        start = time.perf_counter()
        copy.sort(axis=1)
        best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    main()
