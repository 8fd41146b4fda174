"""EK-100 MIR metrics: exact semantics (docs/design.md, Metrics), fast path == official definition."""

import pickle

import numpy as np
import pytest

from tempret_jax import metrics
from tempret_jax.data import ek100

EK100_VALUES = [0, 1 / 12, 1 / 8, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 1]


def _close(a, b, tol=1e-6):
    for name in ("mAP", "nDCG"):
        for d in ("v2t", "t2v", "avg"):
            assert a[name][d] == pytest.approx(b[name][d], abs=tol), (name, d)


def _row(sim_row, rel_row):
    """V2T numbers of a single row (T2V is then over 1-item columns)."""
    return metrics.mir_metrics(np.array([sim_row], float), np.array([rel_row], float))


def test_map_uses_raw_relevance_above_each_hit():
    # Ranked rel [0.5, 1, 0, 1]: AP = (1.5/2 + 2.5/4) / 2 = 0.6875 (docs/design.md, Metrics).
    m = _row([0.9, 0.8, 0.7, 0.6], [0.5, 1, 0, 1])
    assert m["mAP"]["v2t"] == pytest.approx(68.75)


def test_ndcg_linear_gains_over_top_k_relevant():
    # k = 3 relevant items; ranked rel [0.5, 1, 0, 1] -> DCG over ranks 1..3.
    m = _row([0.9, 0.8, 0.7, 0.6], [0.5, 1, 0, 1])
    dcg = 0.5 / np.log2(2) + 1 / np.log2(3) + 0 / np.log2(4)
    idcg = 1 / np.log2(2) + 1 / np.log2(3) + 0.5 / np.log2(4)
    assert m["nDCG"]["v2t"] == pytest.approx(100 * dcg / idcg)


def test_rows_without_hits_are_left_out_of_the_mean():
    sim = np.array([[0.9, 0.1], [0.8, 0.2]])
    rel = np.array([[1.0, 0.0], [0.5, 0.0]])  # row 1 has no rel == 1 item
    m = metrics.mir_metrics(sim, rel)
    assert m["mAP"]["v2t"] == pytest.approx(100.0)  # only row 0 counts
    assert m["nDCG"]["v2t"] == pytest.approx(100.0)  # row 1: its one relevant item ranks 1st
    assert m["mAP"]["t2v"] == pytest.approx(100.0)  # column 1 has nothing relevant: left out
    _close(m, metrics.reference_mir_metrics(sim, rel))


def test_ties_are_broken_by_index_stable():
    # All similarities equal: the order is the column order.
    m = _row([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1])
    assert m["mAP"]["v2t"] == pytest.approx(100 * (1 / 2 + 2 / 4) / 2)
    m = _row([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])
    assert m["mAP"]["v2t"] == pytest.approx(100 * (1 / 1 + 2 / 3) / 2)


def test_perfect_and_reversed_rankings():
    rng = np.random.default_rng(0)
    rel = rng.choice(EK100_VALUES, size=(20, 30))
    rel[np.arange(20), np.arange(20)] = 1  # every row and most columns have a hit
    rel[:, 20:][rng.random((20, 10)) < 0.3] = 1
    perfect = rel + 1e-3 * rng.random(rel.shape)  # sorts like rel in both directions
    m = metrics.mir_metrics(perfect, rel)
    assert m["nDCG"]["v2t"] == pytest.approx(100) and m["nDCG"]["t2v"] == pytest.approx(100)
    # mAP is 100 only when every partially relevant item ranks below all hits: true here.
    assert m["mAP"]["avg"] == pytest.approx(100)
    reversed_ = metrics.mir_metrics(-perfect, rel)
    assert reversed_["mAP"]["avg"] < 50 and reversed_["nDCG"]["avg"] < 80
    _close(reversed_, metrics.reference_mir_metrics(-perfect, rel))


@pytest.mark.parametrize("seed", range(8))
def test_fast_equals_reference_with_ties_and_partial_relevance(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 40, size=2)
    rel = rng.choice(EK100_VALUES, size=(n, m), p=[0.6] + [0.05] * 8)
    # Even seeds: continuous similarities; odd seeds: few distinct values, many ties.
    sim = (rng.standard_normal((n, m)) if seed % 2 == 0
           else rng.integers(0, 3, (n, m)).astype(np.float32))
    _close(metrics.mir_metrics(sim, rel), metrics.reference_mir_metrics(sim, rel), tol=1e-9)


def test_float64_values_equal_in_float32_rank_by_their_exact_values():
    # The ranking sorts float32 keys; float64 values that round to one float32 are ordered by
    # their exact values, true ties by column.
    rng = np.random.default_rng(0)
    rel = rng.choice(EK100_VALUES, size=(30, 50), p=[0.6] + [0.05] * 8)
    sim = 1 + rng.integers(0, 4, (30, 50)) * 1e-12  # 4 values, one float32
    assert len(np.unique(sim.astype(np.float32))) == 1
    _close(metrics.mir_metrics(sim, rel), metrics.reference_mir_metrics(sim, rel), tol=1e-9)
    assert metrics.mir_metrics(sim, rel) != metrics.mir_metrics(sim.astype(np.float32), rel)


def test_negative_zero_ties_with_zero():
    m = _row([0.0, -0.0, 0.0, -0.0], [0, 1, 0, 1])  # one value: column order
    assert m["mAP"]["v2t"] == pytest.approx(100 * (1 / 2 + 2 / 4) / 2)


def test_a_relevance_view_and_float64_similarities_give_the_same_numbers():
    rng = np.random.default_rng(3)
    rel = rng.choice(EK100_VALUES, size=(60, 45), p=[0.6] + [0.05] * 8)
    sim = rng.standard_normal((60, 45)).astype(np.float32)
    expected = metrics.mir_per_row(sim, rel)
    flipped = metrics.mir_per_row(np.asfortranarray(sim.astype(np.float64)), np.asfortranarray(rel))
    for key, value in expected.items():
        np.testing.assert_array_equal(flipped[key], value)


def _real_case(rel, kind, seed=1):
    """A similarity matrix for the real relevance: 'random' float32 with some ties, or
    'structured': the relevance plus noise, rounded to 2 decimals (many ties, a good model)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        sim = rng.standard_normal(rel.shape).astype(np.float32)
        sim[:, :50] = np.round(sim[:, :50], 1)  # some ties among float32 similarities
        return sim
    return np.round(rel + 0.5 * rng.standard_normal(rel.shape), 2)


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_fast_equals_reference_on_real_relevance(ek100_dir, kind):
    rel, _, _ = ek100.load_test_relevance(ek100_dir)
    rel = rel[::7, ::3]  # a real-valued slice, small enough for the slow reference
    sim = _real_case(rel, kind)
    _close(metrics.mir_metrics(sim, rel), metrics.reference_mir_metrics(sim, rel), tol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_fast_equals_reference_on_the_full_real_split(ek100_dir, kind):
    rel, _, _ = ek100.load_test_relevance(ek100_dir)
    sim = _real_case(rel, kind)
    _close(metrics.mir_metrics(sim, rel), metrics.reference_mir_metrics(sim, rel), tol=1e-9)


def test_random_similarity_on_real_split_lands_at_the_papers_random_row(ek100_dir):
    rel, clip_ids, sentence_ids = ek100.load_test_relevance(ek100_dir)
    sim = np.random.default_rng(0).standard_normal(rel.shape).astype(np.float32)
    m = metrics.mir_metrics(sim, rel)
    # EK-100 MIR "Random" row (EgoVLP / AVION tables): mAP 5.7 / 5.6 / 5.7, nDCG 10.8 / 10.9 / 10.9.
    paper = {"mAP": (5.7, 5.6, 5.7), "nDCG": (10.8, 10.9, 10.9)}
    for name, values in paper.items():
        for d, value in zip(("v2t", "t2v", "avg"), values):
            assert abs(m[name][d] - value) <= 0.2, (name, d, m[name][d])


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        metrics.mir_metrics(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.mir_metrics(np.full((2, 2), np.nan), np.eye(2))


def test_dual_softmax_equals_a_plain_loop():
    rng = np.random.default_rng(0)
    sim = rng.standard_normal((5, 7))
    s = sim.T.copy()  # texts x videos
    for t in range(s.shape[0]):  # softmax over videos, times S
        e = np.exp(s[t] / 500)
        s[t] = e / e.sum() * s[t]
    for v in range(s.shape[1]):  # softmax over texts
        e = np.exp(s[:, v])
        s[:, v] = e / e.sum()
    np.testing.assert_allclose(metrics.dual_softmax(sim), s.T, rtol=1e-12)


def test_format_table():
    m = {"mAP": {"v2t": 1, "t2v": 2, "avg": 1.5}, "nDCG": {"v2t": 3, "t2v": 4, "avg": 3.5}}
    lines = metrics.format_table(m).splitlines()
    assert lines[0].split() == ["V2T", "T2V", "avg"]
    assert lines[1].split() == ["mAP", "1.00", "2.00", "1.50"]


# ---------------------------------------------------------------------------------------------
# Challenge submission.


def test_submission_round_trip(tmp_path):
    sim = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    path = tmp_path / "sub.pkl"
    metrics.write_submission(path, sim, ["c0", "c1", "c2"], ["s0", "s1"], sls=(4, 3, 3))
    sub = metrics.read_submission(path, clip_ids=["c2", "c1", "c0"], sentence_ids=["s0", "s1"])
    assert sub["version"] == "0.1" and sub["challenge"] == "multi_instance_retrieval"
    assert (sub["sls_pt"], sub["sls_tl"], sub["sls_td"]) == (4, 3, 3)
    assert sub["vis_ids"] == ["c0", "c1", "c2"] and sub["txt_ids"] == ["s0", "s1"]
    np.testing.assert_array_equal(sub["sim_mat"], sim)
    assert [p.name for p in tmp_path.iterdir()] == ["sub.pkl"]  # no temporary left behind


def test_submission_validation(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        metrics.write_submission(tmp_path / "a.pkl", np.zeros((2, 2)), ["c0"], ["s0", "s1"])
    assert not (tmp_path / "a.pkl").exists()
    metrics.write_submission(tmp_path / "b.pkl", np.zeros((1, 2)), ["c0"], ["s0", "s1"])
    with pytest.raises(ValueError, match="txt_ids do not match"):
        metrics.read_submission(tmp_path / "b.pkl", sentence_ids=["s0", "s9"])
    with pytest.raises(ValueError, match="sls_pt"):
        metrics.write_submission(tmp_path / "c.pkl", np.zeros((1, 1)), ["c"], ["s"], sls=(9, 3, 3))


def test_reading_a_submission_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"sim_mat": Evil()}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        metrics.read_submission(path)
