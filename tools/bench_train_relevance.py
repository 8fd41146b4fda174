"""Memory and time of the train relevance (positives without the dense 67,217 x 15,989 matrix).

    python tools/bench_train_relevance.py [--annotation_dir tests/data/ek100] [--clips 67217]

EPIC_100_retrieval_train.csv is not shipped, so a full-size one is synthesised with the real
columns (`synthetic.synthesize_train_csv`: each clip copies the classes and narration of a
random row of the real train sentence file, so clip keys follow EK-100's class statistics).
Peak memory is measured with tracemalloc (NumPy reports its buffers to it) around reading the
CSV and building `TrainRelevance`; the dense float32 matrix is shown for comparison.
"""

import argparse
import pathlib
import tempfile
import time
import tracemalloc

import numpy as np

from tempret_jax.data import ek100, synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation_dir", default="tests/data/ek100", type=pathlib.Path)
    parser.add_argument("--clips", type=int, default=67217)
    args = parser.parse_args()

    sentences = ek100.read_sentences(args.annotation_dir / ek100.TRAIN_SENTENCES_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / ek100.TRAIN_CLIPS_FILE
        synthetic.synthesize_train_csv(path, args.annotation_dir / ek100.TRAIN_SENTENCES_FILE,
                                       args.clips)
        tracemalloc.start()
        start = time.perf_counter()
        clips = ek100.read_clips(path)
        read_s = time.perf_counter() - start
        read_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        relevance = ek100.TrainRelevance.from_tables(clips, sentences)
        build_s = time.perf_counter() - start - read_s
        build_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    kept = sum(a.nbytes for a in (relevance.pos_indptr, relevance.pos_keys, relevance.pos_cum,
                                  relevance.sentence_order, relevance.sentence_start,
                                  relevance.clip_key_of, relevance.sentence_key_of))
    counts = [relevance.num_positives(i) for i in range(0, len(clips), 97)]
    dense = len(clips) * len(sentences) * 4
    print(f"{'train clips':<34}{len(clips):>12,}")
    print(f"{'train sentences':<34}{len(sentences):>12,}")
    print(f"{'unique clip / sentence keys':<34}{len(relevance.clip_keys):>6,} / {len(relevance.sentence_keys):,}")
    print(f"{'positive (key, key) pairs':<34}{len(relevance.pos_keys):>12,}")
    print(f"{'mean positives per clip (sampled)':<34}{np.mean(counts):>12,.0f}")
    print(f"{'read CSV / build (s, traced)':<34}{read_s:>6.1f} / {build_s:.1f}")
    print(f"{'positive index kept (MB)':<34}{kept / 2**20:>12.1f}")
    print(f"{'peak traced MB: read CSV / build':<34}{read_peak / 2**20:>6.1f} / {build_peak / 2**20:.1f}")
    print(f"{'dense float32 matrix would be (MB)':<34}{dense / 2**20:>12.1f}")


if __name__ == "__main__":
    main()
