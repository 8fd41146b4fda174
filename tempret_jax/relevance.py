"""EK-100 relevance between a clip and a sentence from their classes (docs/design.md, Relevance).

    rel = 0.5 * [verb_a == verb_b] + 0.5 * IoU(nouns_a, nouns_b)

with the noun classes taken as sets (multi-hot rows) and IoU(empty, empty) = 0. Every form here
and the losses' on-device form go through `from_counts`, one division of exact small integers:
the value is the correctly rounded float32 of the true one, so the host (numpy) and the device
(JAX) give the same bits, and a sampled positive with the relevance of a candidate gives a
difference of exactly 0 in the SMS loss.
"""

from __future__ import annotations

import numpy as np

POSITIVE_THRESHOLD = 0.1  # a sentence is a training positive of a clip when rel > 0.1


def from_counts(same_verb, inter, union):
    """rel of pairs from their counts, elementwise; numpy or JAX arrays (operators only).

    Args:
      same_verb: 1.0 where the verbs are equal, else 0.0; inter: |nouns_a & nouns_b|;
      union: |nouns_a | nouns_b|. float32 arrays of one shape, small integers (exact).

    Returns:
      float32 array of that shape.
    """
    # (same_verb * u + inter) / (2 * u) is 0.5 * same_verb + 0.5 * IoU as ONE division. With
    # u = max(union, 1), no nouns on either side (inter = 0) gives 0.5 * same_verb.
    u = union + (union == 0)
    return (same_verb * u + inter) / (2 * u)


def matrix(verb_a, nouns_a, verb_b, nouns_b) -> np.ndarray:
    """rel of every item a against every item b.

    Args:
      verb_a: (n_a,) int verb classes; nouns_a: (n_a, K) bool multi-hot noun sets.
      verb_b: (n_b,) int; nouns_b: (n_b, K) bool.

    Returns:
      (n_a, n_b) float32; exactly 1.0 where verb and noun set are equal.
    """
    a = np.asarray(nouns_a, np.float32)
    b = np.asarray(nouns_b, np.float32)
    inter = a @ b.T  # sums of at most K ones: exact in float32
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    same_verb = (np.asarray(verb_a)[:, None] == np.asarray(verb_b)[None, :]).astype(np.float32)
    return from_counts(same_verb, inter, union)


def aligned(verb_a, nouns_a, verb_b, nouns_b) -> np.ndarray:
    """rel of the aligned pairs (a[i], b[i]): verbs (n,), noun sets (n, K) bool -> (n,) float32,
    the values `matrix` gives for them."""
    nouns_a, nouns_b = np.asarray(nouns_a, bool), np.asarray(nouns_b, bool)
    inter = np.sum(nouns_a & nouns_b, axis=1, dtype=np.float32)
    union = np.sum(nouns_a | nouns_b, axis=1, dtype=np.float32)
    same_verb = (np.asarray(verb_a) == np.asarray(verb_b)).astype(np.float32)
    return from_counts(same_verb, inter, union)
