"""Retrieval losses (docs/design.md, Losses) against plain loops, their gradients, properties, and the
global-batch versions on 1, 2, 4 and 8 simulated devices."""

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from tempret_jax import global_loss, losses
from tempret_jax.data import ek100

GAMMA, TAU, EPS = 0.6, 0.1, 1.1 / 240
EPS32 = np.float32(EPS)
# Relevance values that occur between EK-100 clips and sentences.
EK100_VALUES = np.float32([0, 1 / 12, 1 / 8, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 1])


# ---------------------------------------------------------------------------------------------
# Brute force, written from docs/design.md (Losses) with x[i, j] = cos(text_i, video_j).


def cosine(text, video):
    t = np.asarray(text, np.float64)
    v = np.asarray(video, np.float64)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return t @ v.T


def sms_term(r, d, gamma=GAMMA, tau=TAU):
    u = gamma * float(r) - d
    if r > EPS32:
        return max(u, 0.0)
    if abs(r) < EPS32:
        return max(abs(u) - tau, 0.0)
    return max(-u, 0.0)


def brute_pair_mean(video, text, term):
    """Mean of term(i, (a, b), d) over the 2n(n-1) (anchor i, candidate j != i) of both
    directions: d = x[i, i] - (anchor's cosine with j), (a, b) the (clip, sentence) of the
    candidate's relevance to the anchor's pair."""
    x = cosine(text, video)
    n = len(x)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += term(i, (j, i), x[i, i] - x[i, j])  # text i ranks clip j
                total += term(i, (i, j), x[i, i] - x[j, i])  # clip i ranks text j
    return total / (2 * n * (n - 1))


def brute_sms(video, text, c, rel):
    return brute_pair_mean(
        video, text, lambda i, ab, d: sms_term(np.float32(c[i]) - np.float32(rel[ab]), d))


def brute_mi_mm(video, text, margins):
    return brute_pair_mean(video, text, lambda i, ab, d: max(margins[i] - d, 0.0))


def brute_info_nce(video, text, temperature):
    x = cosine(text, video) / temperature
    n = len(x)
    total = 0.0
    for i in range(n):
        total += np.log(np.sum(np.exp(x[i, :]))) - x[i, i]
        total += np.log(np.sum(np.exp(x[:, i]))) - x[i, i]
    return total / (2 * n)


def brute_itm(logits, labels, mask):
    terms = [-(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
             for z, y, keep in zip(logits, labels, mask) if keep]
    return sum(terms) / len(terms)


# ---------------------------------------------------------------------------------------------
# Batches.


def random_batch(n, seed, d=8):
    """Embeddings, sampled-positive relevance and relevance with EK-100 values, plus boundary
    pairs: R == 0, |R| < eps, R == +eps and R == -eps exactly (in float32)."""
    rng = np.random.default_rng(seed)
    video = rng.normal(size=(n, d)).astype(np.float32)
    text = rng.normal(size=(n, d)).astype(np.float32)
    rel = rng.choice(EK100_VALUES, size=(n, n))
    c = rng.choice(EK100_VALUES[1:], size=n)
    rel[np.arange(n), np.arange(n)] = c
    # Anchor 0 has a positive of relevance exactly eps: candidates at rel 0, eps/2, eps, 2 eps
    # give R = +eps, |R| < eps, 0 and -eps (all exact in float32).
    c[0] = rel[0, 0] = EPS32
    boundary = np.float32([0, EPS32 / 2, EPS32, 2 * EPS32])
    for k, j in enumerate(range(1, n)):
        rel[j, 0] = rel[0, j] = boundary[k % 4]
    if n > 2:  # a realistic exact tie: a candidate exactly as relevant as the positive
        rel[2, 1] = rel[1, 2] = c[1]
    return video, text, c, rel


def check_boundaries_present(c, rel):
    r = np.float32(c[0]) - rel[1:, 0]
    return {float(x) for x in r}


def class_labels(n, seed, num_verbs=4, num_nouns=6):
    """Random (verb, noun set) labels for n clips and n sentences; some noun sets are empty."""
    rng = np.random.default_rng(seed)
    labels = {}
    for side in ("clip", "text"):
        labels[f"{side}_verb"] = rng.integers(0, num_verbs, n).astype(np.int32)
        labels[f"{side}_nouns"] = rng.random((n, num_nouns)) < 0.3
    return labels


# ---------------------------------------------------------------------------------------------
# Each loss against its loop.


@pytest.mark.parametrize("n", [2, 5, 33])
def test_sms_matches_design_loop(n):
    video, text, c, rel = random_batch(n, seed=n)
    if n > 4:
        expected = {float(EPS32), float(EPS32 / 2), 0.0, float(-EPS32)}
        assert check_boundaries_present(c, rel) == expected
    got = losses.sms_loss(video, text, c, rel)
    np.testing.assert_allclose(got, brute_sms(video, text, c, rel), rtol=2e-5, atol=1e-7)


def test_sms_boundary_at_plus_and_minus_eps_is_otherwise():
    """R == +eps and R == -eps take relu(-u); |R| < eps takes relu(|u| - tau); R > eps relu(u)."""
    video = np.float32([[1, 0], [1, 0]])  # all cosines 1: d = 0, u = gamma * R
    text = np.float32([[1, 0], [1, 0]])
    for r, expected in [(EPS32, 0.0),  # otherwise: relu(-gamma * eps) = 0
                        (-EPS32, GAMMA * EPS32),  # otherwise: relu(gamma * eps)
                        (EPS32 / 2, 0.0),  # |R| < eps: relu(gamma * eps / 2 - tau) = 0
                        (np.float32(0.5), GAMMA * 0.5)]:  # R > eps: relu(u)
        c = np.float32([r, r]) if r > 0 else np.float32([0, 0])
        off = np.float32(0) if r > 0 else -r
        rel = np.float32([[c[0], off], [off, c[1]]])
        got = losses.sms_loss(video, text, c, rel)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9, err_msg=f"R = {r}")


@pytest.mark.parametrize("n", [2, 5, 33])
def test_mi_mm_and_adaptive_match_design_loop(n):
    video, text, c, _ = random_batch(n, seed=100 + n)
    np.testing.assert_allclose(losses.mi_mm_loss(video, text),
                               brute_mi_mm(video, text, [0.2] * n), rtol=2e-5)
    np.testing.assert_allclose(losses.adaptive_mi_mm_loss(video, text, c),
                               brute_mi_mm(video, text, 0.4 * np.float64(c)), rtol=2e-5)
    np.testing.assert_allclose(losses.mi_mm_loss(video, text, margin=0.5),
                               brute_mi_mm(video, text, [0.5] * n), rtol=2e-5)


@pytest.mark.parametrize("n", [2, 5, 33])
def test_info_nce_matches_loop(n):
    video, text, _, _ = random_batch(n, seed=200 + n)
    for temperature in (0.05, 1.0):
        np.testing.assert_allclose(losses.info_nce_loss(video, text, temperature),
                                   brute_info_nce(video, text, temperature), rtol=2e-5)


def test_itm_matches_loop_with_and_without_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=9).astype(np.float32) * 3
    labels = np.float32([1, 0, 0, 1, 0, 0, 1, 0, 0])
    mask = np.array([1, 1, 0, 1, 1, 1, 1, 0, 1], bool)
    np.testing.assert_allclose(losses.itm_loss(logits, labels), brute_itm(logits, labels, [1] * 9),
                               rtol=1e-5)
    np.testing.assert_allclose(losses.itm_loss(logits, labels, mask),
                               brute_itm(logits, labels, mask), rtol=1e-5)


def test_bad_shapes_are_clear_errors():
    video, text, c, rel = random_batch(5, seed=0)
    with pytest.raises(ValueError, match="relevance must be"):
        losses.sms_loss(video, text, c, rel[:4])
    with pytest.raises(ValueError, match="pos_relevance"):
        losses.sms_loss(video, text, c[:3], rel)
    with pytest.raises(ValueError, match="same shape"):
        losses.mi_mm_loss(video, text[:4])
    with pytest.raises(ValueError, match="at least 2"):
        losses.mi_mm_loss(video[:1], text[:1])
    with pytest.raises(ValueError, match="unknown loss"):
        global_loss.make_global_loss("triplet")
    with pytest.raises(ValueError, match="no hyper-parameter"):
        global_loss.make_global_loss("mi_mm", tau=0.1)
    with pytest.raises(ValueError, match="missing \\['pos_relevance'\\]"):
        global_loss.make_global_loss("adaptive_mi_mm")(video, text)


def test_inputs_are_what_each_loss_takes_besides_the_embeddings():
    assert losses.inputs("sms") == ("pos_relevance", "clip_verb", "clip_nouns", "text_verb",
                                    "text_nouns")
    assert losses.inputs("mi_mm") == ()
    assert losses.inputs("adaptive_mi_mm") == ("pos_relevance",)
    assert losses.inputs("info_nce") == ("temperature",)
    assert losses.inputs("egonce") == ("text_verbs", "text_nouns")
    with pytest.raises(ValueError, match="unknown loss 'triplet'; expected one of .*'sms'"):
        losses.inputs("triplet")


# ---------------------------------------------------------------------------------------------
# Gradients (finite differences away from the hinge kinks) and properties.


def hinge_points(video, text, c, rel):
    """All u = gamma R - d of SMS and m - d of MI-MM, to keep finite differences off the kinks."""
    x = cosine(text, video)
    n = len(x)
    off = ~np.eye(n, dtype=bool)
    d_t = (np.diag(x)[:, None] - x)[off]
    d_v = (np.diag(x)[:, None] - x.T)[off]
    u_t = GAMMA * (c[:, None] - rel.T)[off] - d_t
    u_v = GAMMA * (c[:, None] - rel)[off] - d_v
    u = np.concatenate([u_t, u_v])
    return np.concatenate([u, np.abs(u) - TAU, 0.2 - d_t, 0.2 - d_v,
                           0.4 * np.repeat(c, n - 1) - d_t, 0.4 * np.repeat(c, n - 1) - d_v])


def smooth_batch(n=5):
    """A random batch whose hinge arguments are all at least 0.02 from a kink."""
    for seed in range(1000):
        batch = random_batch(n, seed=1000 + seed)
        if np.min(np.abs(hinge_points(*batch))) > 0.02:
            return batch
    raise AssertionError("no batch away from the kinks")


def test_gradients_match_finite_differences():
    video, text, c, rel = smooth_batch()
    kw = dict(order=1, modes=("rev",), eps=1e-3, atol=2e-2, rtol=2e-2)
    check_grads(lambda v, t: losses.sms_loss(v, t, c, rel), (video, text), **kw)
    check_grads(lambda v, t: losses.mi_mm_loss(v, t), (video, text), **kw)
    check_grads(lambda v, t: losses.adaptive_mi_mm_loss(v, t, c), (video, text), **kw)
    check_grads(lambda v, t, tmp: losses.info_nce_loss(v, t, tmp), (video, text, np.float32(0.5)),
                **kw)
    logits = np.float32([0.3, -1.2, 2.0])
    check_grads(lambda z: losses.itm_loss(z, np.float32([1, 0, 0])), (logits,), **kw)


def test_sms_is_zero_when_every_ordering_holds_with_margin():
    """Similarity gaps twice the relevance gaps: u = (1/2 - 1) d has the sign that zeroes every
    branch, and |u| < tau where |R| < eps."""
    rng = np.random.default_rng(3)
    video = rng.normal(size=(12, 6)).astype(np.float32)
    text = rng.normal(size=(12, 6)).astype(np.float32)
    x = cosine(text, video)
    rel = (x.T / (2 * GAMMA) + 1).astype(np.float32)  # rel(clip b, text a) from x[a, b]
    c = np.diag(rel).copy()
    assert losses.sms_loss(video, text, c, rel) == 0.0
    # Break one ordering: the loss becomes positive.
    rel[3, 0] = c[0] - 5  # text 0 must now beat video 3 by gamma * 5 > 2
    assert losses.sms_loss(video, text, c, rel) > 0.0


def test_losses_are_invariant_to_embedding_scale():
    video, text, c, rel = random_batch(9, seed=5)
    scale = np.float32(np.random.default_rng(5).uniform(0.1, 30, size=(9, 1)))
    for f in (lambda v, t: losses.sms_loss(v, t, c, rel), losses.mi_mm_loss,
              lambda v, t: losses.adaptive_mi_mm_loss(v, t, c),
              lambda v, t: losses.info_nce_loss(v, t, 0.1)):
        np.testing.assert_allclose(f(video * scale, 7 * text), f(video, text), rtol=1e-5)


def test_swapping_video_and_text_with_transposed_relevance_is_symmetric():
    video, text, c, rel = random_batch(9, seed=6)
    np.testing.assert_allclose(losses.sms_loss(text, video, c, rel.T),
                               losses.sms_loss(video, text, c, rel), rtol=1e-6)
    np.testing.assert_allclose(losses.adaptive_mi_mm_loss(text, video, c),
                               losses.adaptive_mi_mm_loss(video, text, c), rtol=1e-6)
    g = jax.grad(lambda v, t: losses.sms_loss(v, t, c, rel), argnums=(0, 1))(video, text)
    g_swapped = jax.grad(lambda t, v: losses.sms_loss(t, v, c, rel.T), argnums=(0, 1))(text, video)
    np.testing.assert_allclose(g_swapped[0], g[1], atol=1e-6)
    np.testing.assert_allclose(g_swapped[1], g[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Relevance from class ids.


def test_batch_relevance_equals_ek100_test_relevance(ek100_dir):
    """Bit-identical to `ek100.load_test_relevance` on real clips and sentences."""
    rel, clip_ids, sentence_ids = ek100.load_test_relevance(ek100_dir)
    clips = ek100.read_clips(ek100_dir / ek100.TEST_CLIPS_FILE)
    sentences = ek100.read_sentences(ek100_dir / ek100.TEST_SENTENCES_FILE)
    a, b = clips.labels(), sentences.labels(clips)
    rows = np.random.default_rng(0).choice(len(a), 1500, replace=False)
    got = np.asarray(losses.batch_relevance(a.verb[rows], a.nouns[rows], b.verb, b.nouns))
    np.testing.assert_array_equal(got, rel[rows])
    assert len(np.unique(got)) > 10  # many distinct IoU values, not just 0 / 0.5 / 1


def test_batch_relevance_equals_ek100_on_train_sentences_and_edge_cases(ek100_dir):
    sentences = ek100.read_sentences(ek100_dir / ek100.TRAIN_SENTENCES_FILE)
    labels = sentences.labels().take(np.arange(0, len(sentences), 8))
    got = np.asarray(losses.batch_relevance(labels.verb, labels.nouns, labels.verb, labels.nouns))
    np.testing.assert_array_equal(got, ek100.relevance(labels, labels))
    # Empty noun sets (IoU(empty, empty) = 0) and repeated classes (sets, not lists).
    edge = ek100.ClassLabels.from_lists([1, 1, 2, 1], [(), (), (10, 10), (10,)])
    got = np.asarray(losses.batch_relevance(edge.verb, edge.nouns, edge.verb, edge.nouns))
    np.testing.assert_array_equal(got, ek100.relevance(edge, edge))
    assert got[0, 1] == 0.5 and got[2, 3] == 0.5 and got[2, 2] == 1.0


def test_equal_relevance_gives_exactly_zero_r(ek100_dir):
    """A sampled positive's relevance (host, `pair_relevance`) minus the on-device relevance of
    an equally relevant candidate is exactly 0, so SMS takes the |R| < eps branch."""
    clips = ek100.read_clips(ek100_dir / ek100.TEST_CLIPS_FILE).labels().take(np.arange(300))
    c = ek100.pair_relevance(clips, clips.take(np.arange(1, 301) % 300))
    rel = np.asarray(losses.batch_relevance(clips.verb, clips.nouns, clips.verb, clips.nouns))
    same = np.isclose(rel, c[:, None], atol=1e-3)
    assert same.sum() > 300
    np.testing.assert_array_equal((np.float32(c)[:, None] - rel)[same], 0.0)


# ---------------------------------------------------------------------------------------------
# Global batch over simulated devices.


def hard_labels(labels):
    """Charades-style labels from the class labels: a text names one class (its first noun),
    a clip shows its noun set plus its own text's class."""
    text_class = np.argmax(labels["text_nouns"], axis=1).astype(np.int32)
    clip_classes = labels["clip_nouns"].copy()
    clip_classes[np.arange(len(text_class)), text_class] = True
    return dict(clip_classes=clip_classes, text_class=text_class)


def global_inputs(name, n, seed):
    rng = np.random.default_rng(seed)
    video = rng.normal(size=(n, 8)).astype(np.float32)
    text = rng.normal(size=(n, 8)).astype(np.float32)
    labels = class_labels(n, seed)
    rel = np.asarray(losses.batch_relevance(labels["clip_verb"], labels["clip_nouns"],
                                            labels["text_verb"], labels["text_nouns"]))
    c = np.diag(rel).copy()
    inputs = {"sms": dict(pos_relevance=c, **labels), "mi_mm": {},
              "adaptive_mi_mm": dict(pos_relevance=c),
              "info_nce": dict(temperature=np.float32(0.2)),
              "egonce": dict(text_verbs=np.eye(4, dtype=bool)[labels["text_verb"]],
                             text_nouns=labels["text_nouns"]),
              "sms_hard": dict(pos_relevance=np.ones(n, np.float32), **hard_labels(labels))}[name]
    reference = {"sms": lambda v, t, i: losses.sms_loss(v, t, i["pos_relevance"], rel),
                 "mi_mm": lambda v, t, i: losses.mi_mm_loss(v, t),
                 "adaptive_mi_mm": lambda v, t, i: losses.adaptive_mi_mm_loss(
                     v, t, i["pos_relevance"]),
                 "info_nce": lambda v, t, i: losses.info_nce_loss(v, t, i["temperature"]),
                 "egonce": lambda v, t, i: losses.egonce_loss(v, t, i["text_verbs"],
                                                              i["text_nouns"]),
                 "sms_hard": lambda v, t, i: losses.sms_hard_loss(v, t, i["clip_classes"],
                                                                  i["text_class"])}[name]
    return video, text, inputs, reference


def value_and_grads(f, video, text, inputs):
    """Loss value and gradients with respect to the embeddings (and a temperature)."""
    floats = {k: v for k, v in inputs.items() if k == "temperature"}
    fixed = {k: v for k, v in inputs.items() if k not in floats}
    loss = lambda v, t, fl: f(v, t, {**fixed, **fl})  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(video, text, floats)


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_global_loss_equals_single_device_loss(name):
    n = 16
    video, text, inputs, reference = global_inputs(name, n, seed=7)
    want = value_and_grads(reference, video, text, inputs)
    for devices in (1, 2, 4, 8):
        mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
        loss_fn = global_loss.make_global_loss(name, mesh, "data")
        got = value_and_grads(lambda v, t, i: loss_fn(v, t, **i), video, text, inputs)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, err_msg=f"{devices} devices")
        for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=f"{devices} devices")


def test_global_loss_on_a_two_axis_mesh_and_without_mesh():
    """Batch sharded over ("data", "fsdp") together; mesh=None is the one-device version."""
    video, text, inputs, reference = global_inputs("sms", 16, seed=8)
    want = value_and_grads(reference, video, text, inputs)
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    for loss_fn in (global_loss.make_global_loss("sms", mesh, ("data", "fsdp")),
                    global_loss.make_global_loss("sms")):
        got = value_and_grads(lambda v, t, i: loss_fn(v, t, **i), video, text, inputs)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-4, atol=1e-6)


def test_global_loss_rejects_a_batch_that_does_not_divide():
    video, text, inputs, _ = global_inputs("sms", 12, seed=9)
    loss_fn = global_loss.make_global_loss("sms", jax.make_mesh((8,), ("data",)), "data")
    with pytest.raises(ValueError, match="12 pairs does not divide over the 8 devices"):
        loss_fn(video, text, **inputs)


# ---------------------------------------------------------------------------------------------
# Hard negatives for the ITM cross-encoder.


def test_hard_negatives_are_never_relevant_and_same_on_any_mesh():
    n = 16
    video, text, inputs, _ = global_inputs("sms", n, seed=10)
    labels = {k: inputs[k] for k in losses.LABEL_KEYS}
    rel = np.asarray(losses.batch_relevance(*labels.values()))
    key = jax.random.key(0)
    want = global_loss.make_hard_negative_sampler(threshold=0.3)(key, video, text, **labels)
    for j, i in enumerate(np.asarray(want.video_for_text)):  # video i for text j
        if want.video_valid[j]:
            assert i != j and rel[i, j] <= 0.3
    for i, j in enumerate(np.asarray(want.text_for_video)):  # text j for video i
        if want.text_valid[i]:
            assert i != j and rel[i, j] <= 0.3
    allowed_t = (rel.T <= 0.3) & ~np.eye(n, dtype=bool)
    np.testing.assert_array_equal(want.video_valid, allowed_t.any(1))
    np.testing.assert_array_equal(want.text_valid, ((rel <= 0.3) & ~np.eye(n, dtype=bool)).any(1))
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    sample = jax.jit(global_loss.make_hard_negative_sampler(mesh, threshold=0.3))
    got = sample(key, video, text, **labels)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_hard_negatives_follow_the_softmax_of_similarity():
    """Empirical frequencies over many keys match softmax(cos / T) over allowed candidates."""
    rng = np.random.default_rng(11)
    video = rng.normal(size=(4, 3)).astype(np.float32)
    text = rng.normal(size=(4, 3)).astype(np.float32)
    verb = np.int32([0, 1, 1, 2])  # pairs 1 and 2 share a verb: rel 0.5 > 0.1, never drawn
    nouns = np.eye(4, dtype=bool)
    sample = global_loss.make_hard_negative_sampler(temperature=0.5)
    keys = jax.random.split(jax.random.key(1), 4000)
    draw = lambda k: sample(k, video, text, verb, nouns, verb, nouns).video_for_text  # noqa: E731
    draws = jax.jit(jax.vmap(draw))(keys)
    x = cosine(text, video) / 0.5
    allowed = ~np.eye(4, dtype=bool) & ~((verb[:, None] == verb[None, :]) & (verb[:, None] == 1))
    for i in range(4):
        p = np.where(allowed[i], np.exp(x[i]), 0)
        freq = np.bincount(np.asarray(draws[:, i]), minlength=4) / len(keys)
        np.testing.assert_allclose(freq, p / p.sum(), atol=0.03)


# ---------------------------------------------------------------------------------------------
# Time-reversed clips as hard negatives (TACT).


def brute_reversed_terms(name, video, text, reversed_video, reversed_verb, inputs, weight):
    """Sum of the extra text-anchor terms: candidate = own clip reversed, where it exists,
    counted ``weight`` times."""
    t = cosine(text, video)
    x_rev = np.diag(cosine(text, reversed_video))
    total = 0.0
    for i in np.flatnonzero(reversed_verb >= 0):
        d = t[i, i] - x_rev[i]
        if name == "mi_mm":
            total += max(0.2 - d, 0.0)
        elif name == "adaptive_mi_mm":
            total += max(inputs["pos_relevance"][i] * 0.4 - d, 0.0)
        elif name == "sms":
            nouns_c, nouns_t = inputs["clip_nouns"][i], inputs["text_nouns"][i]
            union = np.sum(nouns_c | nouns_t)
            iou = np.sum(nouns_c & nouns_t) / union if union else 0.0
            rel = 0.5 * (reversed_verb[i] == inputs["text_verb"][i]) + 0.5 * iou
            total += sms_term(np.float32(inputs["pos_relevance"][i]) - np.float32(rel), d)
    return weight * total


@pytest.mark.parametrize("weight", [1.0, 5.0])
@pytest.mark.parametrize("name", losses.REVERSED_LOSSES)
def test_reversed_negatives_add_one_candidate_per_text_anchor(name, weight):
    """Each text anchor ranks its own reversed clip as one more candidate (where the clip has a
    mirrored verb, reversed_verb >= 0) that counts as ``weight`` candidates; with none the loss
    is exactly the plain loss."""
    n = 8
    video, text, inputs, reference = global_inputs(name, n, seed=11)
    rng = np.random.default_rng(12)
    reversed_video = rng.normal(size=video.shape).astype(np.float32)
    reversed_verb = np.int32([2, -1, 0, 3, -1, -1, 1, 2])
    loss_fn = global_loss.make_global_loss(name, reversed_negatives=True, reversed_weight=weight)
    plain = float(reference(video, text, inputs))
    none = loss_fn(video, text, reversed_video=reversed_video,
                   reversed_verb=np.full(n, -1, np.int32), **inputs)
    np.testing.assert_allclose(none, plain, rtol=1e-6)
    got = loss_fn(video, text, reversed_video=reversed_video, reversed_verb=reversed_verb, **inputs)
    if name == "info_nce":
        temperature = float(inputs["temperature"])
        x = cosine(text, video) / temperature
        x_rev = np.diag(cosine(text, reversed_video)) / temperature
        total = 0.0
        for i in range(n):
            extra = weight * np.exp(x_rev[i]) if reversed_verb[i] >= 0 else 0.0
            total += np.log(np.sum(np.exp(x[i])) + extra) - x[i, i]
            total += np.log(np.sum(np.exp(x[:, i]))) - x[i, i]
        want = total / (2 * n)
    else:
        want = plain + brute_reversed_terms(name, video, text, reversed_video, reversed_verb,
                                            inputs, weight) / (2 * n * (n - 1))
    assert abs(want - plain) > 1e-4  # the extra candidates do count
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("name", ["sms", "info_nce"])
def test_reversed_negatives_on_8_devices_equal_one_device(name):
    n = 16
    video, text, inputs, _ = global_inputs(name, n, seed=13)
    rng = np.random.default_rng(14)
    inputs = dict(inputs, reversed_video=rng.normal(size=video.shape).astype(np.float32),
                  reversed_verb=rng.integers(-1, 4, n).astype(np.int32))
    one = global_loss.make_global_loss(name, reversed_negatives=True, reversed_weight=3.0)
    want = value_and_grads(lambda v, t, i: one(v, t, **i), video, text, inputs)
    mesh = jax.make_mesh((8,), ("data",))
    eight = global_loss.make_global_loss(name, mesh, "data", reversed_negatives=True,
                                    reversed_weight=3.0)
    got = value_and_grads(lambda v, t, i: eight(v, t, **i), video, text, inputs)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_reversed_negative_pushes_the_clip_away_from_its_reversal():
    """The loss grows with the cosine between a sentence and its own clip reversed: the
    gradient pushes the reversed clip away from the sentence."""
    video, text, inputs, _ = global_inputs("info_nce", 4, seed=15)
    loss_fn = global_loss.make_global_loss("info_nce", reversed_negatives=True)
    verbs = np.int32([1, 0, 3, 2])
    loss = lambda v, r: loss_fn(v, text, reversed_video=r, reversed_verb=verbs, **inputs)  # noqa: E731
    g_video, g_reversed = jax.grad(loss, argnums=(0, 1))(video, video)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    assert np.all(np.sum(np.asarray(g_reversed) * t, axis=1) > 0)


def test_reversed_negatives_need_their_inputs():
    video, text, inputs, _ = global_inputs("mi_mm", 4, seed=16)
    loss_fn = global_loss.make_global_loss("mi_mm", reversed_negatives=True)
    with pytest.raises(ValueError, match=r"missing \['reversed_video', 'reversed_verb'\]"):
        loss_fn(video, text)
    with pytest.raises(ValueError, match="reversed_video must have the shape of video"):
        loss_fn(video, text, reversed_video=video[:, :4], reversed_verb=np.zeros(4, np.int32))
