"""The ranking kernels (tempret_jax/ranking.py) equal the official definition on inputs made to
reach each of their paths: crowded cells, bunched values, spreads of 0 and of infinity, ties
between relevant and other items, queries where everything or one thing is relevant."""

import numpy as np
import pytest

from tempret_jax import metrics

EK100_VALUES = [0, 1 / 12, 1 / 8, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 1]


def _assert_equal_to_reference(sim, rel):
    fast, reference = metrics.mir_metrics(sim, rel), metrics.reference_mir_metrics(sim, rel)
    for name in ("mAP", "nDCG"):
        for direction in ("v2t", "t2v"):
            assert fast[name][direction] == pytest.approx(reference[name][direction], abs=1e-9,
                                                          nan_ok=True), (name, direction)


def _relevance(rng, shape, p_relevant=0.3):
    rel = rng.choice(EK100_VALUES, size=shape, p=[1 - p_relevant] + [p_relevant / 8] * 8)
    rel[rng.random(shape) < 0.05] = 1
    return rel


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(3))
def test_heavy_tailed_similarities_crowd_the_cells_and_stay_exact(dtype, seed):
    # Values over 30 orders of magnitude: all but the largest fall in the first cells, so most
    # items meet many relevant items there (the binary search) and the relevant items' sort
    # runs past its insertion budget (the merge sort).
    rng = np.random.default_rng(seed)
    sim = np.exp(rng.uniform(-70, 0, (40, 300))).astype(dtype)
    _assert_equal_to_reference(sim, _relevance(rng, sim.shape))


def test_dual_softmax_scores_stay_exact():
    rng = np.random.default_rng(0)
    rel = _relevance(rng, (120, 80), 0.1)
    sim = metrics.dual_softmax(rel + 0.3 * rng.standard_normal(rel.shape), temperature=0.05)
    _assert_equal_to_reference(sim, rel)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_at_the_ends_of_the_float_range(dtype):
    # The spread between the largest and smallest relevant value overflows to inf.
    big = np.finfo(dtype).max
    rng = np.random.default_rng(1)
    sim = rng.choice(np.array([-big, -1, 0, 1, big], dtype), size=(30, 40))
    sim[:, :10] = rng.standard_normal((30, 10)) * (big / 4)
    _assert_equal_to_reference(sim, _relevance(rng, sim.shape))


def test_one_value_everywhere_ranks_by_column():
    rng = np.random.default_rng(2)
    _assert_equal_to_reference(np.full((25, 35), 0.25, np.float32), _relevance(rng, (25, 35)))


def test_ties_between_relevant_and_other_items_rank_by_column():
    # Three values only: every relevant item ties with many others, at every cell edge.
    rng = np.random.default_rng(3)
    sim = rng.choice(np.array([-0.5, 0.0, -0.0, 0.5]), size=(50, 60)).astype(np.float32)
    _assert_equal_to_reference(sim, _relevance(rng, sim.shape))


def test_everything_relevant_and_one_thing_relevant():
    rng = np.random.default_rng(4)
    sim = rng.standard_normal((6, 9))
    everything = rng.choice(EK100_VALUES[1:], size=sim.shape)
    everything[:, 0] = 1
    _assert_equal_to_reference(sim, everything)
    one = np.zeros(sim.shape)
    one[np.arange(6), rng.integers(0, 9, 6)] = rng.choice([0.5, 1.0], 6)
    _assert_equal_to_reference(sim, one)


def test_other_types_rank_as_their_exact_float_values():
    rng = np.random.default_rng(5)
    rel = _relevance(rng, (20, 30))
    sim = rng.integers(-3, 4, (20, 30)) * 1000 + rng.integers(0, 2, (20, 30))
    hits = (rel == 1).astype(np.int8)
    for s, r, exact_s, exact_r in ((sim, rel, sim.astype(np.float64), rel),
                                   (sim.astype(np.float16), hits, sim.astype(np.float16).astype(
                                       np.float32), hits.astype(np.float64)),
                                   (sim, rel.astype(np.float32), sim.astype(np.float64),
                                    rel.astype(np.float32).astype(np.float64))):
        got, expected = metrics.mir_per_row(s, r), metrics.mir_per_row(exact_s, exact_r)
        for key, value in expected.items():
            np.testing.assert_array_equal(got[key], value)


def test_more_queries_than_one_task_and_one_tile():
    # 300 x 270: several tasks of 256 queries in each direction, the last tile partial.
    rng = np.random.default_rng(6)
    sim = rng.standard_normal((300, 270)).astype(np.float32)
    _assert_equal_to_reference(sim, _relevance(rng, sim.shape, 0.1))
