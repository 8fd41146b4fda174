"""SMS on hard labels (EVA02-AT, Eq. 17; its Charades-Ego fine-tune) against the equation written
as a loop over triplets, and over the global batch on simulated devices.

Eq. 17: for each anchor i, its own pair j = i and another candidate k,
  R = 1 (k is not relevant to i):  [gamma - S_ii + S_ik]_+
  R = 0 (k is relevant too):       [|S_ii - S_ik| - tau]_+
with S the cosine of video i with text k (video anchors) and of text i with video k (text
anchors); relevant means the text's class is one of the clip's classes. The loss is the mean of
the 2n(n-1) terms, as our SMS (docs/design.md, Losses).
"""

import jax
import numpy as np
import pytest

from tempret_jax import global_loss, losses


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def equation_17(video, text, clip_classes, text_class, gamma=0.3, tau=0.1):
    v, t = unit(video), unit(text)
    n = len(v)
    relevant = lambda clip, txt: clip_classes[clip, text_class[txt]]  # noqa: E731
    total = 0.0
    for i in range(n):
        for k in range(n):
            if k == i:
                continue
            for s_own, s_other, rel in ((v[i] @ t[i], v[i] @ t[k], relevant(i, k)),  # video i
                                        (t[i] @ v[i], t[i] @ v[k], relevant(k, i))):  # text i
                if rel:
                    total += max(abs(s_own - s_other) - tau, 0.0)
                else:
                    total += max(gamma - s_own + s_other, 0.0)
    return total / (2 * n * (n - 1))


def batch(n, seed, classes=5, d=8):
    """n pairs: each clip shows its text's class and maybe more; texts name one class."""
    rng = np.random.default_rng(seed)
    text_class = rng.integers(0, classes, n).astype(np.int32)
    clip_classes = rng.random((n, classes)) < 0.3
    clip_classes[np.arange(n), text_class] = True
    return (rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32),
            clip_classes, text_class)


@pytest.mark.parametrize("n", [2, 7, 16])
def test_sms_hard_equals_equation_17(n):
    video, text, classes, label = batch(n, seed=n)
    assert 0 < classes[:, label].mean() < 1  # both cases of Eq. 17 occur
    np.testing.assert_allclose(float(losses.sms_hard_loss(video, text, classes, label)),
                               equation_17(video, text, classes, label), rtol=2e-5)


def test_sms_hard_margin_and_tau_are_hyper_parameters():
    video, text, classes, label = batch(6, seed=1)
    assert losses.spec("sms_hard").defaults == {"margin": 0.3, "tau": 0.1, "eps": 1.1 / 240}
    got = float(losses.sms_hard_loss(video, text, classes, label, margin=0.6, tau=0.05))
    np.testing.assert_allclose(got, equation_17(video, text, classes, label, 0.6, 0.05),
                               rtol=2e-5)


@pytest.mark.parametrize("devices", [1, 4, 8])
def test_global_sms_hard_equals_the_dense_loss(devices):
    video, text, classes, label = batch(16, seed=3)
    mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
    loss_fn = global_loss.make_global_loss("sms_hard", mesh, "data")
    inputs = dict(pos_relevance=np.ones(16, np.float32), clip_classes=classes, text_class=label)
    got = jax.jit(jax.value_and_grad(lambda v, t: loss_fn(v, t, **inputs), argnums=(0, 1)))(
        video, text)
    want = jax.jit(jax.value_and_grad(
        lambda v, t: losses.sms_hard_loss(v, t, classes, label), argnums=(0, 1)))(video, text)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7)


def test_bad_inputs_are_clear_errors():
    video, text, classes, label = batch(4, seed=2)
    with pytest.raises(ValueError, match="clip_classes must have 4 rows"):
        losses.sms_hard_loss(video, text, classes[:3], label)
    with pytest.raises(ValueError, match="text_class must have 4 rows"):
        losses.sms_hard_loss(video, text, classes, label[:, None])
    assert losses.inputs("sms_hard") == ("pos_relevance", "clip_classes", "text_class")
