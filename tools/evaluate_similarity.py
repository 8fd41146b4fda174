"""Scores a saved similarity matrix on the EK-100 MIR test split and prints the standard table.

    python tools/evaluate_similarity.py SIM --annotation_dir DIR [--dual_softmax]

SIM is a .npy (n_clips x n_sentences, rows in the test CSV's clip order, columns in the test
sentence CSV's order) or a challenge submission .pkl (rows and columns are matched by id).
"""

import argparse
import pathlib
import sys

import numpy as np

from tempret_jax import metrics
from tempret_jax.data import ek100


def load_similarity(path: pathlib.Path, clip_ids: np.ndarray, sentence_ids: np.ndarray) -> np.ndarray:
    """The (n_clips, n_sentences) similarity in annotation order, from a .npy or submission."""
    if path.suffix == ".npy":
        sim = np.load(path, allow_pickle=False)
        expected = (len(clip_ids), len(sentence_ids))
        if sim.shape != expected:
            raise ValueError(f"{path}: shape {sim.shape}, expected {expected} "
                             "(test clips x test sentences)")
        return sim
    if path.suffix == ".pkl":
        sub = metrics.read_submission(path, clip_ids, sentence_ids)
        rows = {c: i for i, c in enumerate(sub["vis_ids"])}
        cols = {s: j for j, s in enumerate(sub["txt_ids"])}
        return sub["sim_mat"][np.ix_([rows[c] for c in clip_ids], [cols[s] for s in sentence_ids])]
    raise ValueError(f"{path}: expected a .npy similarity matrix or a .pkl submission")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("similarity", type=pathlib.Path)
    parser.add_argument("--annotation_dir", type=pathlib.Path, required=True)
    parser.add_argument("--dual_softmax", action="store_true",
                        help="re-score with dual-softmax (temperature 500) first")
    args = parser.parse_args(argv)
    try:
        rel, clip_ids, sentence_ids = ek100.load_test_relevance(args.annotation_dir)
        sim = load_similarity(args.similarity, clip_ids, sentence_ids)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dual_softmax:
        sim = metrics.dual_softmax(sim)
    print(metrics.format_table(metrics.mir_metrics(sim, rel)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
