"""Retrieval losses (docs/design.md, Losses): SMS, MI-MM, adaptive MI-MM, InfoNCE, EgoNCE, ITM.

Notation: a batch holds n (clip, sentence) pairs; x[i, j] = cos(text_i, video_j). Each
similarity loss looks at the batch from two *directions*: a text anchor i ranks the videos j
(row i of x), a video anchor i ranks the texts j (column i of x). A direction (`Direction`) is
held as a block of anchor rows against all candidates, so the same per-row terms serve one
device (all rows: the losses here) and data parallelism (each device its own rows against the
all-gathered candidates: `tempret_jax.global_loss`, memory O(n_local x n_global) per device,
never n^2 or n^3).

SMS boundary convention: with R = c_i - rel, the term is relu(u) if R > eps, relu(|u| - tau) if
|R| < eps, and relu(-u) otherwise, so R == +eps or R == -eps exactly falls in "otherwise". R and
eps are compared in float32. Relevance values are float32 computed by
`tempret_jax.relevance.from_counts` on host and device alike (one correctly rounded division),
so a sampled positive with the same relevance as a candidate gives R == 0 exactly on CPU and
GPU; on hardware whose float32 division is not correctly rounded the difference is an ulp, far
inside eps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tempret_jax import relevance as formula  # `relevance` is an argument of sms_loss

_HIGHEST = jax.lax.Precision.HIGHEST  # the loss matmuls are tiny next to the towers

# Per-sample class labels that `batch_relevance` needs for rel(clip a, sentence b).
LABEL_KEYS = ("clip_verb", "clip_nouns", "text_verb", "text_nouns")
# EgoNCE's positives come from the narrations' tags alone, for clips and sentences alike:
# multi-hot verbs and nouns, as EgoClip tags a narration with one or more of each.
EGONCE_KEYS = ("text_verbs", "text_nouns")
# SMS on hard labels (Charades-Ego): each clip's set of classes and each text's class.
HARD_LABEL_KEYS = ("clip_classes", "text_class")
# Inputs given once for the batch (scalars); every other input is one value per sample.
REPLICATED_INPUTS = frozenset({"temperature"})


# ---------------------------------------------------------------------------------------------
# Relevance from class ids.


def batch_relevance(verb_a, nouns_a, verb_b, nouns_b) -> jax.Array:
    """`tempret_jax.relevance`'s rel of every pair, on the device (docs/design.md, Relevance).

    Args:
      verb_a: (n_a,) int verb class ids; nouns_a: (n_a, K) bool multi-hot noun sets.
      verb_b: (n_b,) int; nouns_b: (n_b, K) bool.

    Returns:
      (n_a, n_b) float32, bit-identical to `relevance.matrix` on the host (noun sets as sets,
      IoU(empty, empty) = 0). The formula is symmetric, so rel(clip a, sentence b) and
      rel(sentence b, clip a) are the same call with the arguments swapped.
    """
    verb_a, verb_b = jnp.asarray(verb_a), jnp.asarray(verb_b)
    nouns_a, nouns_b = jnp.asarray(nouns_a), jnp.asarray(nouns_b)
    if verb_a.ndim != 1 or nouns_a.shape[:1] != verb_a.shape or nouns_a.ndim != 2:
        raise ValueError(f"verb_a (n,) and nouns_a (n, K) expected, got {verb_a.shape} and "
                         f"{nouns_a.shape}")
    if (verb_b.ndim != 1 or nouns_b.shape[:1] != verb_b.shape
            or nouns_b.shape[1:] != nouns_a.shape[1:]):
        raise ValueError(f"verb_b (m,) and nouns_b (m, {nouns_a.shape[1]}) expected, "
                         f"got {verb_b.shape} and {nouns_b.shape}")
    a = nouns_a.astype(jnp.float32)
    b = nouns_b.astype(jnp.float32)
    inter = jnp.matmul(a, b.T, precision=_HIGHEST)  # small integers: exact
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    same_verb = (verb_a[:, None] == verb_b[None, :]).astype(jnp.float32)
    return formula.from_counts(same_verb, inter, union)


def shared_action(verbs_a, nouns_a, verbs_b, nouns_b) -> jax.Array:
    """EgoNCE's action-aware positives: 1.0 where a and b share a verb and a noun.

    Args:
      verbs_a: (n_a, V) bool multi-hot verbs of each narration (EgoClip's ``tag_verb``; an
        empty set shares no verb). nouns_a: (n_a, K) bool multi-hot nouns (``tag_noun``).
      verbs_b: (n_b, V) bool; nouns_b: (n_b, K) bool.

    Returns:
      (n_a, n_b) float32 of 0.0 and 1.0, symmetric under swapping a and b. EgoVLP tests
      cos(multi-hot a, multi-hot b) > 0 for verbs and for nouns and multiplies the two
      (trainer/trainer_egoclip.py, model/loss.py): "shares a verb AND a noun". EgoVLP then
      adds the own pair to the mask; `_egonce_sum` adds it from `Direction.own`.
    """
    def shares(a, b):  # small integers: exact
        a, b = jnp.asarray(a).astype(jnp.float32), jnp.asarray(b).astype(jnp.float32)
        return jnp.matmul(a, b.T, precision=_HIGHEST) > 0

    return (shares(verbs_a, verbs_b) & shares(nouns_a, nouns_b)).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# One direction of a batch: anchor rows against all candidates.


class Direction(NamedTuple):
    """Anchors i (m of them, global indices offset + i) against all n candidates j.

    sim: (m, n) cosine of anchor i with candidate j; pos: (m,) cosine with its own pair;
    own: (m, n) bool, True at j == offset + i; rel: (m, n) relevance of the pair (anchor i's
    pair, candidate j) as docs/design.md (Losses) defines it for this direction, or None;
    c: (m,) relevance of each anchor's sampled positive, or None; weight: (m, n) how many
    candidates j counts as, or None (1 each).
    """

    sim: jax.Array
    pos: jax.Array
    own: jax.Array
    rel: jax.Array | None
    c: jax.Array | None
    weight: jax.Array | None = None

    @classmethod
    def of(cls, anchors, candidates, offset, rel=None, c=None) -> Direction:
        """The direction of L2-normalised anchors (m, d) against candidates (n, d); ``offset``
        is the global index of the first anchor (its own pair is candidate offset + i)."""
        sim = jnp.matmul(anchors, candidates.T, precision=_HIGHEST)
        m, n = sim.shape
        own = (offset + jnp.arange(m))[:, None] == jnp.arange(n)[None, :]
        pos = jnp.sum(jnp.where(own, sim, 0.0), axis=1)
        return cls(sim, pos, own, rel, c)

    def weighted(self, terms: jax.Array) -> jax.Array:
        """Sum of the per-candidate terms (m, n) over j != own, each times its weight."""
        if self.weight is not None:
            terms = terms * self.weight
        return jnp.sum(jnp.where(self.own, 0.0, terms))


def normalize(x: jax.Array) -> jax.Array:
    """L2-normalised rows of (..., d), computed in float32 at least (bf16 embeddings are upcast)."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def _hinge_sum(rows: Direction, margin) -> jax.Array:
    """Sum over j != i of relu(margin_i - (pos_i - sim_ij)); margin scalar or (m,)."""
    margin = jnp.broadcast_to(jnp.asarray(margin, jnp.float32), rows.pos.shape)
    terms = jax.nn.relu(margin[:, None] - (rows.pos[:, None] - rows.sim))
    return rows.weighted(terms)


def _mi_mm_sum(rows: Direction, *, margin) -> jax.Array:
    return _hinge_sum(rows, margin)


def _adaptive_mi_mm_sum(rows: Direction, *, margin) -> jax.Array:
    return _hinge_sum(rows, rows.c * margin)


def _sms_sum(rows: Direction, *, margin, tau, eps) -> jax.Array:
    """Sum over j != i of the SMS term (docs/design.md, Losses); margin is gamma."""
    r = rows.c[:, None] - rows.rel
    u = margin * r - (rows.pos[:, None] - rows.sim)
    eps = jnp.float32(eps)
    terms = jnp.where(r > eps, jax.nn.relu(u),
                      jnp.where(jnp.abs(r) < eps, jax.nn.relu(jnp.abs(u) - tau), jax.nn.relu(-u)))
    return rows.weighted(terms)


def _nce_sum(rows: Direction, temperature, positive) -> jax.Array:
    """Sum over anchors of -log of the softmax(sim_i / temperature) mass on the (m, n) bool
    ``positive`` candidates (each row holds at least its own pair)."""
    logits = rows.sim / temperature
    if rows.weight is not None:  # a candidate of weight w counts as w copies of itself
        w = rows.weight
        logits = jnp.where(w > 0, logits + jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
    on_positives = jax.nn.logsumexp(jnp.where(positive, logits, -jnp.inf), axis=1)
    return jnp.sum(jax.nn.logsumexp(logits, axis=1) - on_positives)


def _info_nce_sum(rows: Direction, *, temperature) -> jax.Array:
    """Sum over anchors of the cross-entropy of softmax(sim_i / temperature) at the own pair."""
    return _nce_sum(rows, temperature, rows.own)


def _egonce_sum(rows: Direction, *, temperature) -> jax.Array:
    """EgoNCE's sum over anchors: the positives are the own pair and every pair whose narration
    shares a verb and a noun with the anchor's (rows.rel = `shared_action`)."""
    return _nce_sum(rows, temperature, rows.own | (rows.rel > 0))


class LossSpec(NamedTuple):
    """What defines a similarity loss, whichever devices compute it."""

    row_sum: Callable  # (Direction, **hparams) -> scalar sum over the direction's terms
    defaults: dict  # hyper-parameters (docs/design.md, Losses)
    inputs: tuple[str, ...]  # per-batch inputs besides video and text
    normaliser: Callable[[int], float]  # n -> what the sum of both directions' terms is divided by


def _per_pair(n: int) -> float:
    return 2.0 * n * (n - 1)  # every ordered pair (i, j != i) of both directions: a mean


def _per_anchor(n: int) -> float:
    return 2.0 * n  # every anchor of both directions: the mean of the two directions' means


def _per_direction_anchor(n: int) -> float:
    return float(n)  # every anchor of one direction: the SUM of the two directions' means


_LOSSES = {
    "sms": LossSpec(_sms_sum, dict(margin=0.6, tau=0.1, eps=1.1 / 240),
                    ("pos_relevance",) + LABEL_KEYS, _per_pair),
    "mi_mm": LossSpec(_mi_mm_sum, dict(margin=0.2), (), _per_pair),
    "adaptive_mi_mm": LossSpec(_adaptive_mi_mm_sum, dict(margin=0.4), ("pos_relevance",),
                               _per_pair),
    "info_nce": LossSpec(_info_nce_sum, {}, ("temperature",), _per_anchor),
    "egonce": LossSpec(_egonce_sum, dict(temperature=0.05), EGONCE_KEYS, _per_direction_anchor),
    # EVA02-AT's Eq. 17: SMS where rel is 1 when the text's class is one of the clip's, else
    # 0 (R in {-1, 0, 1}); gamma 0.3 as its Charades-Ego fine-tune.
    "sms_hard": LossSpec(_sms_sum, dict(margin=0.3, tau=0.1, eps=1.1 / 240),
                         ("pos_relevance",) + HARD_LABEL_KEYS, _per_pair),
}
LOSS_NAMES = tuple(_LOSSES)
# The losses that can take time-reversed clips as extra negatives (`global_loss`); EgoNCE's
# positives would need a reversed clip's narration tags.
REVERSED_LOSSES = ("sms", "mi_mm", "adaptive_mi_mm", "info_nce")


def class_membership(clip_classes, text_class) -> jax.Array:
    """Hard-label relevance: rel(clip a, text b) = 1.0 where b's class is one of a's.

    Args:
      clip_classes: (n_a, C) bool, the classes each clip shows.
      text_class: (n_b,) int, the class each text names.
    Returns:
      (n_a, n_b) float32 of 0.0 and 1.0.
    """
    return jnp.take(jnp.asarray(clip_classes), jnp.asarray(text_class), axis=1).astype(
        jnp.float32)


def spec(name: str) -> LossSpec:
    """The `LossSpec` of a loss in `LOSS_NAMES`; ValueError naming them for any other name."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {LOSS_NAMES}")
    return _LOSSES[name]


def inputs(name: str) -> tuple[str, ...]:
    """The per-batch inputs loss ``name`` takes besides the video and text embeddings.

    E.g. "sms" -> ("pos_relevance",) + LABEL_KEYS, "info_nce" -> ("temperature",); see
    `tempret_jax.global_loss.make_global_loss` for their shapes. ValueError for an unknown name.
    """
    return spec(name).inputs


def check_batch(video, text) -> int:
    """n of a batch of (n, d) video and text embeddings; ValueError unless n >= 2, same shapes."""
    if video.ndim != 2 or video.shape != text.shape:
        raise ValueError(f"video and text must be (n, d) of the same shape, got {video.shape} "
                         f"and {text.shape}")
    n = video.shape[0]
    if n < 2:
        raise ValueError(f"a retrieval loss needs at least 2 pairs in the batch, got {n}")
    return n


def check_per_sample(name: str, value, n: int, ndim: int = 1) -> None:
    """ValueError naming input ``name`` unless it is ``ndim``-D with n rows."""
    if value.ndim != ndim or value.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows ({ndim}-D), got shape {value.shape}")


def _dense_loss(name, video, text, pos_relevance=None, relevance=None, **hparams) -> jax.Array:
    """A loss on one device from the two directions of the full n x n batch."""
    loss = spec(name)
    n = check_batch(video, text)
    v, t = normalize(video), normalize(text)
    rel_t = rel_v = c = None
    if relevance is not None:
        relevance = jnp.asarray(relevance, jnp.float32)
        if relevance.shape != (n, n):
            raise ValueError(f"relevance must be ({n}, {n}) = rel(clip a, sentence b), "
                             f"got {relevance.shape}")
        rel_t, rel_v = relevance.T, relevance  # text i vs clip j: rel(clip j, text i)
    if pos_relevance is not None:
        c = jnp.asarray(pos_relevance, jnp.float32)
        check_per_sample("pos_relevance", c, n)
    total = (loss.row_sum(Direction.of(t, v, 0, rel_t, c), **hparams)
             + loss.row_sum(Direction.of(v, t, 0, rel_v, c), **hparams))
    return total / loss.normaliser(n)


# ---------------------------------------------------------------------------------------------
# Public single-device losses.


def sms_loss(video, text, pos_relevance, relevance, *, margin=0.6, tau=0.1, eps=1.1 / 240):
    """Symmetric multi-similarity loss (EVA02-AT), docs/design.md, Losses.

    Args:
      video, text: (n, d) embeddings of the n pairs (normalised here: cosine similarity).
      pos_relevance: (n,) c_i, relevance of clip i to its own sampled sentence.
      relevance: (n, n) float, relevance[a, b] = rel(clip a, sentence b).
      margin: gamma; tau: tolerance for equally relevant pairs; eps: |R| < eps means "equal".

    Returns:
      Scalar float32: mean of the 2n(n-1) terms (text and video anchors, j != i).
    """
    return _dense_loss("sms", video, text, pos_relevance, relevance,
                       margin=margin, tau=tau, eps=eps)


def sms_hard_loss(video, text, clip_classes, text_class, *, margin=0.3, tau=0.1,
                  eps=1.1 / 240):
    """SMS on hard labels (EVA02-AT Eq. 17, its Charades-Ego fine-tune), docs/design.md, Losses.

    Args:
      video, text: (n, d) embeddings of the n pairs (normalised here: cosine similarity).
      clip_classes: (n, C) bool, the classes clip a shows; text_class: (n,) int, the class
        text b names. rel(clip a, text b) = [text_class_b in clip_classes_a]; each pair's own
        text names one of its clip's classes (c_i = 1).
      margin: gamma (0.3 in EVA02-AT's Charades-Ego fine-tune); tau: the R = 0 relaxation.

    Returns:
      Scalar float32: mean of the 2n(n-1) terms: [gamma - S_ii + S_ij]_+ where j is not
      relevant (R = 1), [|S_ii - S_ij| - tau]_+ where it is too (R = 0).
    """
    n = check_batch(video, text)
    classes, label = jnp.asarray(clip_classes), jnp.asarray(text_class)
    check_per_sample("clip_classes", classes, n, ndim=2)
    check_per_sample("text_class", label, n)
    return _dense_loss("sms_hard", video, text, jnp.ones(n, jnp.float32),
                       class_membership(classes, label), margin=margin, tau=tau, eps=eps)


def mi_mm_loss(video, text, *, margin=0.2):
    """Multi-instance max-margin loss: mean of the 2n(n-1) hinge terms (docs/design.md, Losses).

    video, text: (n, d). Returns a scalar.
    """
    return _dense_loss("mi_mm", video, text, margin=margin)


def adaptive_mi_mm_loss(video, text, pos_relevance, *, margin=0.4):
    """MI-MM with margin c_i * margin for anchor i (EgoVLP), docs/design.md, Losses.

    video, text: (n, d); pos_relevance: (n,) c_i. Returns a scalar.
    """
    return _dense_loss("adaptive_mi_mm", video, text, pos_relevance, margin=margin)


def info_nce_loss(video, text, temperature):
    """Symmetric InfoNCE: mean of the text-to-video and video-to-text cross-entropies.

    This is the bi-directional InfoNCE EVA02-AT pretrains with (its Sec. "Ego4D pretraining",
    temperature 0.05; the paper gives no equation and its repository holds no code, so the
    CLIP form: (1/2n) sum_i [-log softmax_j(x_ij / T)_i - log softmax_j(x_ji / T)_i]).

    video, text: (n, d); temperature: scalar (may be a traced, learned value; 0.05 for
    EVA02-AT). Returns a scalar.
    """
    return _dense_loss("info_nce", video, text, temperature=temperature)


def egonce_loss(video, text, text_verbs, text_nouns, *, temperature=0.05):
    """EgoNCE (EgoVLP) as its authors' code computes it (docs/design.md, Losses).

    Followed: showlab/EgoVLP at 928406c2, model/loss.py (EgoNCE), trainer/trainer_egoclip.py
    (batch and masks), data_loader/EgoClip_EgoMCQ_dataset.py (the adjacent clip). A pair's
    positives are itself and every pair of the batch whose narration shares a verb and a noun
    with its own (`shared_action`, the narrations' tags for clips and sentences alike); the
    loss is -(1/m) sum_i log(softmax mass on i's positives), text anchors plus video anchors.

    Scene-aware negatives are pairs of the batch: for EgoVLP's n samples the batch holds m = 2n
    pairs, each sample's clip and narration plus an adjacent clip of the same video with ITS
    narration and tags, in any order (the loss is invariant to permuting the pairs). Without
    adjacent clips (m = n) it is EgoVLP's EgoNCE with its released config (neg_param false).

    Args:
      video, text: (m, d) embeddings of the m pairs (normalised here: cosine similarity).
      text_verbs: (m, V) bool multi-hot verbs of each pair's narration.
      text_nouns: (m, K) bool multi-hot nouns of each pair's narration.
      temperature: EgoVLP's 0.05 (fixed, not learned).

    Returns:
      Scalar float32: L_t2v + L_v2t (a sum, as EgoVLP's Eq. 1 and code), each a mean over m.
    """
    m = check_batch(video, text)
    verbs, nouns = jnp.asarray(text_verbs), jnp.asarray(text_nouns)
    check_per_sample("text_verbs", verbs, m, ndim=2)
    check_per_sample("text_nouns", nouns, m, ndim=2)
    return _dense_loss("egonce", video, text, relevance=shared_action(verbs, nouns, verbs, nouns),
                       temperature=temperature)


def itm_loss(logits, labels, mask=None):
    """Binary image(video)-text matching loss of a cross-encoder.

    Args:
      logits: (m,) match logits; labels: (m,) 1 for a matching pair, 0 for a negative.
      mask: optional (m,) bool, False for pairs to ignore (negatives the sampler could not draw).

    Returns:
      Scalar: mean sigmoid cross-entropy over the unmasked pairs. It is a mean of per-pair terms,
      so under jit on batch-sharded arrays it already is the global-batch loss.
    """
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels, jnp.float32)
    if logits.ndim != 1 or labels.shape != logits.shape:
        raise ValueError(f"logits and labels must be (m,) of the same shape, got {logits.shape} "
                         f"and {labels.shape}")
    # -log sigmoid(z) for a match, -log(1 - sigmoid(z)) = -log sigmoid(-z) for a negative.
    terms = -jax.nn.log_sigmoid(jnp.where(labels > 0.5, logits, -logits))
    if mask is None:
        return jnp.mean(terms)
    mask = jnp.asarray(mask, bool)
    return jnp.sum(jnp.where(mask, terms, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
