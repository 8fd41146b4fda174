"""Times EK-100 MIR metrics on the real test split: fast path vs the plain official form.

    python tools/bench_metrics.py [--annotation_dir tests/data/ek100] [--repeats 5]

Random similarities (float32, seed per repeat) against the real 9,668 x 3,842 relevance; both
metrics, both directions. Prints median seconds of each and the ratio, and checks that the two
agree to 1e-6.
"""

import argparse
import statistics
import time

import numpy as np

from tempret_jax import metrics
from tempret_jax.data import ek100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation_dir", default="tests/data/ek100")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rel, _, _ = ek100.load_test_relevance(args.annotation_dir)
    times = {"mir_metrics": [], "reference_mir_metrics": []}
    worst = 0.0
    for seed in range(args.repeats):
        sim = np.random.default_rng(seed).standard_normal(rel.shape).astype(np.float32)
        results = {}
        for name in times:
            start = time.perf_counter()
            results[name] = getattr(metrics, name)(sim, rel)
            times[name].append(time.perf_counter() - start)
        worst = max(worst, max(abs(results["mir_metrics"][m][d] - results["reference_mir_metrics"][m][d])
                               for m in ("mAP", "nDCG") for d in ("v2t", "t2v", "avg")))
    fast = statistics.median(times["mir_metrics"])
    slow = statistics.median(times["reference_mir_metrics"])
    print(f"EK-100 MIR test split {rel.shape[0]} x {rel.shape[1]}, {args.repeats} repeats, "
          "random float32 similarities")
    print(f"{'implementation':<24}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, ts in times.items():
        print(f"{name:<24}{statistics.median(ts):>10.2f}{min(ts):>8.2f}{max(ts):>8.2f}")
    print(f"speed-up: {slow / fast:.1f}x; largest difference: {worst:.2e} (percentage points)")
    print(metrics.format_table(results["mir_metrics"]))


if __name__ == "__main__":
    main()
