"""tools/evaluate_similarity.py: the standard table from a saved matrix or a submission."""

import numpy as np
import pytest

from tempret_jax import metrics
from tempret_jax.data import ek100


@pytest.fixture(scope="module")
def evaluate_similarity(load_tool):
    return load_tool("evaluate_similarity")


@pytest.fixture(scope="module")
def split(ek100_dir):
    return ek100.load_test_relevance(ek100_dir)


def test_npy_and_submission_give_the_same_table(tmp_path, ek100_dir, split, capsys,
                                                evaluate_similarity):
    rel, clip_ids, sentence_ids = split
    sim = rel + np.random.default_rng(0).random(rel.shape, dtype=np.float32)
    np.save(tmp_path / "sim.npy", sim)
    # The submission lists rows and columns in another order: they are matched by id.
    rows, cols = np.arange(len(clip_ids))[::-1], np.arange(len(sentence_ids))[::-1]
    metrics.write_submission(tmp_path / "sub.pkl", sim[np.ix_(rows, cols)], clip_ids[rows],
                             sentence_ids[cols])
    tables = []
    for name in ("sim.npy", "sub.pkl"):
        assert evaluate_similarity.main([str(tmp_path / name), "--annotation_dir", str(ek100_dir)]) == 0
        tables.append(capsys.readouterr().out)
    assert tables[0] == tables[1]
    assert tables[0] == metrics.format_table(metrics.mir_metrics(sim, rel)) + "\n"
    assert "mAP" in tables[0] and "nDCG" in tables[0]


def test_wrong_shape_is_a_clear_error(tmp_path, ek100_dir, capsys, evaluate_similarity):
    np.save(tmp_path / "sim.npy", np.zeros((3, 4), np.float32))
    assert evaluate_similarity.main([str(tmp_path / "sim.npy"), "--annotation_dir", str(ek100_dir)]) == 2
    assert "shape (3, 4), expected (9668, 3842)" in capsys.readouterr().err
