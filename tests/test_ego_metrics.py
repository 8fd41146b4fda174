"""EgoMCQ accuracy and Charades-Ego mAP: hand-computed cases, and equality with a transcription
of their authors' loops (showlab/EgoVLP 928406c, model/metric.py `egomcq_accuracy_metrics` and
`charades_metrics` / `map`) on random cases."""

import numpy as np
import pytest

from tempret_jax.evaluators import charades_ego, egomcq


# ---------------------------------------------------------------------------------------------
# EgoMCQ.


def test_egomcq_accuracy_by_hand():
    """Four questions: two inter (one right), two intra (both right; one by the first of two
    tied top scores, as torch.argmax picks)."""
    scores = [[0.9, 0.1, 0.0, 0.0, 0.0],   # inter, answer 0: right
              [0.2, 0.8, 0.0, 0.0, 0.0],   # inter, answer 2: wrong
              [0.0, 0.0, 0.0, 0.5, 0.1],   # intra, answer 3: right
              [0.7, 0.7, 0.0, 0.0, 0.0]]   # intra, answer 0: right (tie, first wins)
    got = egomcq.accuracy(scores, answer=[0, 2, 3, 0], types=[1, 1, 2, 2])
    assert got == {"inter": 50.0, "intra": 100.0}


def authors_egomcq(preds, labels, types):
    """Their loop, with the group names of the json (type 1 inter, 2 intra; their code's list
    ["Intra-video", "Inter-video"] swaps them, EgoVLP issue #19)."""
    metrics = {}
    for type_i, group in zip(sorted(set(types)), ["inter", "intra"]):
        correct = total = 0
        for pred, label, t in zip(preds, labels, types):
            if t == type_i:
                correct += int(np.argmax(pred) == label)
                total += 1
        metrics[group] = correct / total * 100
    return metrics


def test_egomcq_accuracy_equals_the_authors_loop():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 5)).astype(np.float32)
    answer, types = rng.integers(0, 5, 200), rng.integers(1, 3, 200)
    got = egomcq.accuracy(scores, answer, types)
    want = authors_egomcq(scores, answer, types)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12)


def test_egomcq_reports_only_the_types_present_and_refuses_bad_input():
    assert egomcq.accuracy([[1, 0]], [0], [2]) == {"intra": 100.0}
    with pytest.raises(ValueError, match=r"question types \[3\]: expected 1 .* or 2"):
        egomcq.accuracy([[1, 0]], [0], [3])
    with pytest.raises(ValueError, match=r"scores \(q, C\), answer \(q,\) and types \(q,\)"):
        egomcq.accuracy([[1, 0]], [0, 1], [1, 1])


# ---------------------------------------------------------------------------------------------
# Charades-Ego.


def test_charades_map_by_hand():
    """Class 0: positives at ranks 1 and 3 of 4 -> AP (1/1 + 2/3) / 2 = 5/6; class 1: its one
    positive ranked 2nd -> 1/2; class 2: no positive, left out. Video 3 has no action: -inf,
    so although it scores highest in class 1 it ranks last there."""
    scores = [[0.9, 0.1, 0.0],
              [0.7, 0.8, 0.0],
              [0.5, 0.85, 0.0],
              [0.1, 5.0, 0.0]]
    labels = np.asarray([[1, 0, 0],
                         [0, 1, 0],
                         [1, 0, 0],
                         [0, 0, 0]], bool)
    assert charades_ego.class_map(scores, labels) == pytest.approx(100 * (5 / 6 + 1 / 2) / 2)


def authors_map(submission, gt):
    """charades_metrics: rows without labels to -inf, then their per-class loop (their mean
    over all classes: NaN when a class has no positive, so the random cases give each class
    one)."""
    fix = submission.copy()
    fix[gt.sum(axis=1) == 0, :] = -np.inf
    aps = []
    for c in range(fix.shape[1]):
        order = np.argsort(-fix[:, c], kind="stable")
        tp = gt[:, c][order] == 1
        fp = ~tp
        prec = np.cumsum(tp) / (np.cumsum(fp) + np.cumsum(tp)).astype(float)
        aps.append(sum(prec[i] for i in range(len(tp)) if tp[i]) / tp.sum())
    return 100 * np.mean(aps)


def test_charades_map_equals_the_authors_loop():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(60, 157))
    labels = rng.random((60, 157)) < 0.05
    labels[rng.integers(0, 60, 157), np.arange(157)] = True  # every class has a positive
    labels[:3] = False  # and some videos have no action
    assert charades_ego.class_map(scores, labels) == pytest.approx(
        authors_map(scores, labels.astype(int)), abs=1e-9)


def test_charades_map_refuses_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        charades_ego.class_map(np.zeros((2, 3)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="no class has a positive"):
        charades_ego.class_map(np.zeros((2, 3)), np.zeros((2, 3), bool))
