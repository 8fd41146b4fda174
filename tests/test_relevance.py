"""tempret_jax.relevance: the formula, its one division, the same bits on numpy and JAX."""

import jax.numpy as jnp
import numpy as np

from tempret_jax import relevance


def _all_counts(k=300):
    """Every (inter, union) with 0 <= inter <= union <= k, union >= 1, as float32."""
    union, inter = np.meshgrid(np.arange(1, k + 1), np.arange(k + 1), indexing="ij")
    keep = inter <= union
    return inter[keep].astype(np.float32), union[keep].astype(np.float32)


def test_one_division_is_the_correctly_rounded_formula():
    inter, union = _all_counts()
    for verb in (0.0, 1.0):
        same_verb = np.full(inter.shape, verb, np.float32)
        exact = (0.5 * verb + 0.5 * (inter.astype(np.float64) / union)).astype(np.float32)
        np.testing.assert_array_equal(relevance.from_counts(same_verb, inter, union), exact)
        on_device = relevance.from_counts(jnp.asarray(same_verb), jnp.asarray(inter),
                                          jnp.asarray(union))
        np.testing.assert_array_equal(np.asarray(on_device), exact)


def test_no_nouns_on_either_side_is_half_the_verb_term():
    zero = np.zeros(2, np.float32)
    np.testing.assert_array_equal(relevance.from_counts(np.float32([0, 1]), zero, zero), [0, 0.5])


def test_matrix_and_aligned_agree():
    rng = np.random.default_rng(0)
    verb = rng.integers(3, size=40)
    nouns = rng.random((40, 6)) < 0.3  # some rows have no noun
    rel = relevance.matrix(verb, nouns, verb, nouns)
    assert rel.shape == (40, 40) and rel.dtype == np.float32
    np.testing.assert_array_equal(np.diag(rel)[nouns.any(1)], 1.0)
    np.testing.assert_array_equal(rel, rel.T)
    partner = rng.permutation(40)
    np.testing.assert_array_equal(
        relevance.aligned(verb, nouns, verb[partner], nouns[partner]), rel[np.arange(40), partner])
