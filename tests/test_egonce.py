"""EgoNCE (EgoVLP) against its equations and a transcription of its authors' algorithm, its
properties, and the global-batch version on 1, 2, 4 and 8 simulated devices.

EgoVLP's paper (egovlp_ek100_2022, Eqs. 1-2): the batch B of N samples grows to
B~ = B + N(B) with an adjacent clip i' of each sample i (same video, under a minute away);

  L_v2t = 1/|B~| sum_{i in B~} log [ sum_{k in P_i} exp(v_i.t_k / tau)
                                     / sum_{j in B} (exp(v_i.t_j / tau) + exp(v_i.t_j' / tau)) ],
  P_i = {j in B : noun(j) & noun(i) != {}, verb(j) & verb(i) != {}},   L = L_v2t + L_t2v.

Where the authors' code (showlab/EgoVLP 928406c2: model/loss.py EgoNCE,
trainer/trainer_egoclip.py) differs from these equations we follow the code:
  (a) the sign: the code minimises -log(...), the printed Eq. 2 has no minus;
  (b) P_i ranges over all of B~, adjacent pairs included (the mask is built on the
      concatenated 2N tags), not over B alone;
  (c) an anchor's own pair is always positive (mask + eye), even when its narration has no
      verb or no noun;
  (d) an adjacent clip comes with its own narration and tags: it is a pair like any other
      (an anchor and a candidate of both directions), which Eq. 2's t_j' implies.
"""

import re

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from tempret_jax import config as config_lib
from tempret_jax import global_loss, losses

TAU = 0.05


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Reference 1: Eq. 2 as a loop over sets, with the code's (a)-(d).


def tags(verbs, nouns):
    """Verb and noun sets of one narration (multi-hot rows)."""
    return set(np.flatnonzero(verbs).tolist()), set(np.flatnonzero(nouns).tolist())


def equation_egonce(batch, adjacent, tau=TAU):
    """batch, adjacent: (video, text, verb, nouns) of B and of N(B), i' = adjacent row i."""
    pairs = [tuple(part[i] for part in batch) for i in range(len(batch[0]))]
    pairs += [tuple(part[i] for part in adjacent) for i in range(len(adjacent[0]))]  # B~
    v = unit([p[0] for p in pairs])
    t = unit([p[1] for p in pairs])
    sets = [tags(p[2], p[3]) for p in pairs]
    n_b = len(batch[0])

    def positives(i):  # (b) k over B~, (c) k == i always
        return [k for k in range(len(pairs)) if k == i or (
            sets[k][0] & sets[i][0] and sets[k][1] & sets[i][1])]

    def direction(a, b):  # anchors a_i against candidates b_j
        total = 0.0
        for i in range(len(pairs)):
            num = sum(np.exp(a[i] @ b[k] / tau) for k in positives(i))
            den = sum(np.exp(a[i] @ b[j] / tau) + np.exp(a[i] @ b[n_b + j] / tau)
                      for j in range(n_b))
            total += np.log(num / den)
        return -total / len(pairs)  # (a)

    return direction(v, t) + direction(t, v)


# ---------------------------------------------------------------------------------------------
# Reference 2: the authors' algorithm, step by step, in numpy.


def cosine_matrix(a, b):  # their sim_matrix: rows normalised with max(norm, 1e-8)
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-8)
    return a @ b.T


def softmax_rows(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def transcribed_egonce(batch, adjacent, tau=TAU):
    """Concatenate samples and their negatives, masks from tag cosines, two softmaxes."""
    video, text, verbs, nouns = (np.concatenate([b, a]) for b, a in zip(batch, adjacent))
    x = cosine_matrix(text, video)
    mask_v = cosine_matrix(verbs.astype(np.float64), verbs.astype(np.float64))
    mask_n = cosine_matrix(nouns.astype(np.float64), nouns.astype(np.float64))
    mask = (mask_v * mask_n + np.eye(len(x))) > 0
    i_sm, j_sm = softmax_rows(x / tau), softmax_rows(x.T / tau)
    return (-np.mean(np.log(np.sum(i_sm * mask, axis=1)))
            - np.mean(np.log(np.sum(j_sm * mask, axis=1))))


# ---------------------------------------------------------------------------------------------
# Batches: n samples and their n adjacent clips.


def half_batch(n, rng, num_verbs, num_nouns=6, d=8):
    """(video, text, verbs, nouns) of n pairs, tags multi-hot: most narrations have one verb,
    some two (EgoClip's tag_verb lists), some none; some have no noun."""
    verbs = np.zeros((n, num_verbs), bool)
    verbs[np.arange(n), rng.integers(0, num_verbs, n)] = rng.random(n) < 0.85
    verbs[np.arange(n), rng.integers(0, num_verbs, n)] |= rng.random(n) < 0.2
    return (rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32),
            verbs, rng.random((n, num_nouns)) < 0.3)


def sample_and_adjacent(n, seed, num_verbs=3):
    rng = np.random.default_rng(seed)
    batch = half_batch(n, rng, num_verbs)
    adjacent = half_batch(n, rng, num_verbs)
    # Adjacent clips often show the same action: half of them take their sample's tags.
    same = rng.random(n) < 0.5
    adjacent[2][same] = batch[2][same]
    adjacent[3][same] = batch[3][same]
    return batch, adjacent


def appended(batch, adjacent):
    """The batch as EgoVLP's trainer builds it on one GPU: samples, then their adjacent clips."""
    return tuple(np.concatenate([b, a]) for b, a in zip(batch, adjacent))


def per_device(batch, adjacent, devices):
    """The global batch of ``devices`` devices, each holding its samples then their adjacent
    clips (what an all-gather of EgoVLP's per-GPU batches gives)."""
    split = lambda x: np.split(x, devices)  # noqa: E731
    return tuple(np.concatenate([y for pair in zip(split(b), split(a)) for y in pair])
                 for b, a in zip(batch, adjacent))


def egonce(video, text, verb, nouns, **kw):
    return float(losses.egonce_loss(video, text, verb, nouns, **kw))


# ---------------------------------------------------------------------------------------------
# Value.


@pytest.mark.parametrize("n", [1, 4, 16])
def test_egonce_equals_the_equations_and_the_authors_algorithm(n):
    batch, adjacent = sample_and_adjacent(n, seed=n)
    verbs, nouns = appended(batch, adjacent)[2:]
    shared = np.asarray(losses.shared_action(verbs, nouns, verbs, nouns))
    untagged = ~verbs.any(1) | ~nouns.any(1)
    if n > 1:  # the batch exercises (b) and (c): adjacent positives, untagged own pairs
        assert shared[:, n:].sum() > 0 and untagged.any()
    want = equation_egonce(batch, adjacent)
    np.testing.assert_allclose(transcribed_egonce(batch, adjacent), want, rtol=1e-12)
    np.testing.assert_allclose(egonce(*appended(batch, adjacent)), want, rtol=2e-5)


def test_egonce_temperature_is_005_unless_given():
    batch, adjacent = sample_and_adjacent(6, seed=1)
    pairs = appended(batch, adjacent)
    assert losses.spec("egonce").defaults == {"temperature": 0.05}
    np.testing.assert_allclose(egonce(*pairs, temperature=0.2),
                               equation_egonce(batch, adjacent, tau=0.2), rtol=2e-5)
    assert egonce(*pairs, temperature=0.2) != egonce(*pairs)


def test_positives_share_a_verb_and_a_noun_or_are_the_own_pair():
    """Pairs 0, 1: a common verb (1 has verbs {0, 2}) and a common noun; 2: same verb, other
    nouns; 3: a common noun, other verb; 4: no verb; 5: no noun; 6: verbs {1, 3} and noun 0,
    sharing verb 1 and the noun with 3. Positives: 0 and 1 of each other, 3 and 6 of each
    other."""
    verbs = np.zeros((7, 4), bool)
    verbs[[0, 1, 2, 5], 0] = True
    verbs[[3, 6], 1] = True
    verbs[1, 2] = verbs[6, 3] = True
    nouns = np.zeros((7, 4), bool)
    nouns[[0, 1, 3, 4, 6], 0] = True
    nouns[1, 1] = nouns[2, 2] = True
    want = np.eye(7)
    want[0, 1] = want[1, 0] = want[3, 6] = want[6, 3] = 1
    got = np.asarray(losses.shared_action(verbs, nouns, verbs, nouns)) + np.eye(7)
    np.testing.assert_array_equal(got > 0, want > 0)


def test_without_shared_actions_egonce_is_twice_info_nce():
    """With no two narrations sharing a verb and a noun only the own pair is positive: the sum
    of the two directions' InfoNCE means, i.e. twice the symmetric InfoNCE (their mean)."""
    rng = np.random.default_rng(2)
    video, text = rng.normal(size=(2, 10, 8)).astype(np.float32)
    verbs = np.eye(10, dtype=bool)
    nouns = np.ones((10, 3), bool)
    np.testing.assert_allclose(egonce(video, text, verbs, nouns),
                               2 * float(losses.info_nce_loss(video, text, TAU)), rtol=1e-6)


def test_egonce_is_invariant_to_the_order_of_the_pairs():
    """Where the adjacent clips sit in the batch does not matter: appended to the samples, per
    device, or shuffled."""
    batch, adjacent = sample_and_adjacent(8, seed=3)
    want = egonce(*appended(batch, adjacent))
    order = np.random.default_rng(3).permutation(16)
    for pairs in (per_device(batch, adjacent, 4), tuple(x[order] for x in appended(batch,
                                                                                    adjacent))):
        np.testing.assert_allclose(egonce(*pairs), want, rtol=1e-6)


def test_gradients_match_finite_differences():
    batch, adjacent = sample_and_adjacent(3, seed=5)
    video, text, verb, nouns = appended(batch, adjacent)
    check_grads(lambda v, t: losses.egonce_loss(v, t, verb, nouns, temperature=0.5),
                (video, text), order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)


def test_bad_inputs_are_clear_errors():
    batch, adjacent = sample_and_adjacent(3, seed=6)
    video, text, verb, nouns = appended(batch, adjacent)
    with pytest.raises(ValueError, match="text_verbs must have 6 rows"):
        losses.egonce_loss(video, text, verb[:5], nouns)
    with pytest.raises(ValueError, match=r"text_verbs must have 6 rows \(2-D\)"):
        losses.egonce_loss(video, text, verb[:, 0], nouns)
    with pytest.raises(ValueError, match="text_nouns must have 6 rows"):
        losses.egonce_loss(video, text, verb, nouns[:, 0])
    with pytest.raises(ValueError, match=r"missing \['text_nouns'\]"):
        global_loss.make_global_loss("egonce")(video, text, text_verbs=verb)
    with pytest.raises(ValueError, match="reversed_negatives work with losses"):
        global_loss.make_global_loss("egonce", reversed_negatives=True)
    assert losses.inputs("egonce") == ("text_verbs", "text_nouns")


# ---------------------------------------------------------------------------------------------
# Global batch over simulated devices.


def value_and_grads(f, video, text):
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(video, text)


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_global_egonce_equals_the_dense_loss_and_the_equations(devices):
    """Each device holds its samples and their adjacent clips; the global loss over all of them
    equals the one-device loss (value and gradients) and the equations."""
    batch, adjacent = sample_and_adjacent(16, seed=7)
    video, text, verb, nouns = per_device(batch, adjacent, devices)
    mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
    loss_fn = global_loss.make_global_loss("egonce", mesh, "data")
    got = value_and_grads(lambda v, t: loss_fn(v, t, text_verbs=verb, text_nouns=nouns),
                          video, text)
    want = value_and_grads(lambda v, t: losses.egonce_loss(v, t, verb, nouns), video, text)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[0], equation_egonce(batch, adjacent), rtol=2e-5)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Config.


def egonce_config(**loss):
    c = config_lib.default_config()
    c.loss.name = "egonce"
    c.loss.update(loss)
    return c


def test_a_config_may_train_with_egonce_at_its_temperature():
    config_lib.validate(egonce_config(), num_devices=8)
    config_lib.validate(egonce_config(hparams={"temperature": 0.07}), num_devices=8)


@pytest.mark.parametrize("loss, message", [
    (dict(hparams={"margin": 0.2}), "loss.hparams: expected hyper-parameters of 'egonce': "
                                    "['temperature']"),
    (dict(hparams={"temperature": 0.0}), "loss.hparams.temperature: expected > 0"),
    (dict(reversed_negatives=((0, 1),)), "loss.reversed_negatives: expected () with loss.name "
                                         "'egonce'"),
])
def test_a_bad_egonce_config_names_its_key(loss, message):
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.validate(egonce_config(**loss), num_devices=8)
