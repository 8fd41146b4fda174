"""Retrieval losses over the global batch (DESIGN.md §6): SMS, MI-MM, adaptive MI-MM, InfoNCE, ITM.

Notation: a batch holds n (clip, sentence) pairs; x[i, j] = cos(text_i, video_j). Each
similarity loss looks at the batch from two *directions*: a text anchor i ranks the videos j
(row i of x), a video anchor i ranks the texts j (column i of x). A direction is held as a
block of anchor rows against all candidates, so the same code serves one device (all rows) and
data parallelism (each device its own rows against the all-gathered candidates: memory
O(n_local x n_global) per device, never n^2 or n^3; see `make_global_loss`).

SMS boundary convention: with R = c_i - rel, the term is relu(u) if R > eps, relu(|u| - tau) if
|R| < eps, and relu(-u) otherwise, so R == +eps or R == -eps exactly falls in "otherwise". R and
eps are compared in float32. Relevance values are float32 computed by
`tempret_jax.relevance.from_counts` on host and device alike (one correctly rounded division),
so a sampled positive with the same relevance as a candidate gives R == 0 exactly on CPU and
GPU; on hardware whose float32 division is not correctly rounded the difference is an ulp, far
inside eps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from tempret_jax import relevance as formula  # `relevance` is an argument of sms_loss

_HIGHEST = jax.lax.Precision.HIGHEST  # the loss matmuls are tiny next to the towers

# Per-sample class labels that `batch_relevance` needs for rel(clip a, sentence b).
LABEL_KEYS = ("clip_verb", "clip_nouns", "text_verb", "text_nouns")
# Inputs of the time-reversed negatives (`make_global_loss(..., reversed_negatives=True)`).
REVERSED_KEYS = ("reversed_video", "reversed_verb")


# ---------------------------------------------------------------------------------------------
# Relevance from class ids.


def batch_relevance(verb_a, nouns_a, verb_b, nouns_b) -> jax.Array:
    """`tempret_jax.relevance`'s rel of every pair, on the device (docs/design.md, Relevance).

    Args:
      verb_a: (n_a,) int verb class ids; nouns_a: (n_a, K) bool multi-hot noun sets.
      verb_b: (n_b,) int; nouns_b: (n_b, K) bool.

    Returns:
      (n_a, n_b) float32, bit-identical to `relevance.matrix` on the host (noun sets as sets,
      IoU(empty, empty) = 0). The formula is symmetric, so rel(clip a, sentence b) and rel(sentence b,
      clip a) are the same call with the arguments swapped.
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


# ---------------------------------------------------------------------------------------------
# One direction of a batch: anchor rows against all candidates.


class _Rows(NamedTuple):
    """Anchors i (m of them, global indices offset + i) against all n candidates j.

    sim: (m, n) cosine of anchor i with candidate j; pos: (m,) cosine with its own pair;
    own: (m, n) bool, True at j == offset + i; rel: (m, n) relevance of the pair (anchor i's
    pair, candidate j) as DESIGN §6 defines it for this direction, or None; c: (m,) relevance of
    each anchor's sampled positive, or None.
    """

    sim: jax.Array
    pos: jax.Array
    own: jax.Array
    rel: jax.Array | None
    c: jax.Array | None
    weight: jax.Array | None = None  # (m, n): how many candidates j counts as (None: 1 each)

    def weighted(self, terms: jax.Array) -> jax.Array:
        """Sum of the per-candidate terms (m, n) over j != own, each times its weight."""
        if self.weight is not None:
            terms = terms * self.weight
        return jnp.sum(jnp.where(self.own, 0.0, terms))


def _normalize(x):
    """L2-normalised rows, computed in float32 at least (bf16 embeddings are upcast)."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def _rows(anchors, candidates, offset, rel=None, c=None) -> _Rows:
    """Builds a direction from L2-normalised anchors (m, d) and candidates (n, d)."""
    sim = jnp.matmul(anchors, candidates.T, precision=_HIGHEST)
    m, n = sim.shape
    own = (offset + jnp.arange(m))[:, None] == jnp.arange(n)[None, :]
    pos = jnp.sum(jnp.where(own, sim, 0.0), axis=1)
    return _Rows(sim, pos, own, rel, c)


def _hinge_sum(rows: _Rows, margin) -> jax.Array:
    """Sum over j != i of relu(margin_i - (pos_i - sim_ij)); margin scalar or (m,)."""
    margin = jnp.broadcast_to(jnp.asarray(margin, jnp.float32), rows.pos.shape)
    terms = jax.nn.relu(margin[:, None] - (rows.pos[:, None] - rows.sim))
    return rows.weighted(terms)


def _mi_mm_sum(rows: _Rows, *, margin) -> jax.Array:
    return _hinge_sum(rows, margin)


def _adaptive_mi_mm_sum(rows: _Rows, *, margin) -> jax.Array:
    return _hinge_sum(rows, rows.c * margin)


def _sms_sum(rows: _Rows, *, margin, tau, eps) -> jax.Array:
    """Sum over j != i of the SMS term (DESIGN §6); margin is gamma."""
    r = rows.c[:, None] - rows.rel
    u = margin * r - (rows.pos[:, None] - rows.sim)
    eps = jnp.float32(eps)
    terms = jnp.where(r > eps, jax.nn.relu(u),
                      jnp.where(jnp.abs(r) < eps, jax.nn.relu(jnp.abs(u) - tau), jax.nn.relu(-u)))
    return rows.weighted(terms)


def _info_nce_sum(rows: _Rows, *, temperature) -> jax.Array:
    """Sum over anchors of the cross-entropy of softmax(sim_i / temperature) at the own pair."""
    logits = rows.sim / temperature
    if rows.weight is not None:  # a candidate of weight w counts as w copies of itself
        w = rows.weight
        logits = jnp.where(w > 0, logits + jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
    return jnp.sum(jax.nn.logsumexp(logits, axis=1) - rows.pos / temperature)


class _Spec(NamedTuple):
    row_sum: Callable  # (_Rows, **hparams) -> scalar sum over the direction's terms
    defaults: dict  # hyper-parameters (DESIGN §6)
    inputs: tuple[str, ...]  # per-batch inputs besides video and text
    pairs: bool  # normalise by 2n(n-1) (all ordered pairs, both directions) or by 2n (anchors)


_LOSSES = {
    "sms": _Spec(_sms_sum, dict(margin=0.6, tau=0.1, eps=1.1 / 240),
                 ("pos_relevance",) + LABEL_KEYS, True),
    "mi_mm": _Spec(_mi_mm_sum, dict(margin=0.2), (), True),
    "adaptive_mi_mm": _Spec(_adaptive_mi_mm_sum, dict(margin=0.4), ("pos_relevance",), True),
    "info_nce": _Spec(_info_nce_sum, {}, ("temperature",), False),
}
LOSS_NAMES = tuple(_LOSSES)
_REPLICATED = frozenset({"temperature"})  # scalars; every other input is one value per sample


def _normaliser(spec: _Spec, n: int) -> float:
    return 2.0 * n * (n - 1) if spec.pairs else 2.0 * n


def _check_batch(video, text) -> int:
    if video.ndim != 2 or video.shape != text.shape:
        raise ValueError(f"video and text must be (n, d) of the same shape, got {video.shape} "
                         f"and {text.shape}")
    n = video.shape[0]
    if n < 2:
        raise ValueError(f"a retrieval loss needs at least 2 pairs in the batch, got {n}")
    return n


def _check_per_sample(name, value, n, ndim=1):
    if value.ndim != ndim or value.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows ({ndim}-D), got shape {value.shape}")


def _dense_loss(name, video, text, pos_relevance=None, relevance=None, **hparams) -> jax.Array:
    """A loss on one device from the two directions of the full n x n batch."""
    spec = _LOSSES[name]
    n = _check_batch(video, text)
    v, t = _normalize(video), _normalize(text)
    rel_t = rel_v = c = None
    if relevance is not None:
        relevance = jnp.asarray(relevance, jnp.float32)
        if relevance.shape != (n, n):
            raise ValueError(f"relevance must be ({n}, {n}) = rel(clip a, sentence b), "
                             f"got {relevance.shape}")
        rel_t, rel_v = relevance.T, relevance  # text i vs clip j: rel(clip j, text i)
    if pos_relevance is not None:
        c = jnp.asarray(pos_relevance, jnp.float32)
        _check_per_sample("pos_relevance", c, n)
    total = (spec.row_sum(_rows(t, v, 0, rel_t, c), **hparams)
             + spec.row_sum(_rows(v, t, 0, rel_v, c), **hparams))
    return total / _normaliser(spec, n)


# ---------------------------------------------------------------------------------------------
# Public single-device losses.


def sms_loss(video, text, pos_relevance, relevance, *, margin=0.6, tau=0.1, eps=1.1 / 240):
    """Symmetric multi-similarity loss (EVA02-AT), DESIGN §6.

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


def mi_mm_loss(video, text, *, margin=0.2):
    """Multi-instance max-margin loss: mean of the 2n(n-1) hinge terms (DESIGN §6).

    video, text: (n, d). Returns a scalar.
    """
    return _dense_loss("mi_mm", video, text, margin=margin)


def adaptive_mi_mm_loss(video, text, pos_relevance, *, margin=0.4):
    """MI-MM with margin c_i * margin for anchor i (EgoVLP), DESIGN §6.

    video, text: (n, d); pos_relevance: (n,) c_i. Returns a scalar.
    """
    return _dense_loss("adaptive_mi_mm", video, text, pos_relevance, margin=margin)


def info_nce_loss(video, text, temperature):
    """Symmetric InfoNCE: mean of the text-to-video and video-to-text cross-entropies.

    video, text: (n, d); temperature: scalar (may be a traced, learned value). Returns a scalar.
    """
    return _dense_loss("info_nce", video, text, temperature=temperature)


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


# ---------------------------------------------------------------------------------------------
# Global batch under data parallelism.


class _Collectives(NamedTuple):
    """What a per-device body needs to see the global batch: identity on one device."""

    gather: Callable  # (n_local, ...) -> (n_global, ...)
    psum: Callable
    offset: Callable  # (n_local) -> global index of the first local row


_LOCAL = _Collectives(gather=lambda x: x, psum=lambda x: x, offset=lambda m: 0)


def _sharded_collectives(axis_name) -> _Collectives:
    return _Collectives(
        gather=functools.partial(jax.lax.all_gather, axis_name=axis_name, tiled=True),
        psum=functools.partial(jax.lax.psum, axis_name=axis_name),
        offset=lambda m: jax.lax.axis_index(axis_name) * m)


def _label_directions(video, text, inputs, ops: _Collectives):
    """The text and video directions of the local rows against the gathered batch.

    Relevance blocks are built here from class ids, so no device holds more than
    (n_local, n_global) of them.
    """
    v, t = _normalize(video), _normalize(text)
    v_all, t_all = ops.gather(v), ops.gather(t)
    offset = ops.offset(v.shape[0])
    c = inputs.get("pos_relevance")
    c = None if c is None else c.astype(jnp.float32)
    rel_t = rel_v = None
    if "clip_verb" in inputs:
        cv, cn, tv, tn = (inputs[k] for k in LABEL_KEYS)
        # text i vs clip j: rel(clip j, text i); video i vs text j: rel(clip i, text j).
        rel_t = batch_relevance(tv, tn, ops.gather(cv), ops.gather(cn))
        rel_v = batch_relevance(cv, cn, ops.gather(tv), ops.gather(tn))
    return _rows(t, v_all, offset, rel_t, c), _rows(v, t_all, offset, rel_v, c)


def _with_reversed_clips(rows_t: _Rows, text, inputs, weight: float) -> _Rows:
    """Text anchors with one more candidate each: their own clip played backwards.

    The reversed clip of a time-asymmetric verb shows the mirrored verb (a clip of "open"
    played backwards is a "close"), so it is a hard negative that only frame order separates
    from the positive, as in TACT's time-reversed negatives (Bagad et al., "Test of Time",
    CVPR 2023). ``reversed_verb`` (m,) is that mirrored verb class, -1 where the clip has none
    (the candidate is then left out). The reversed clip keeps the clip's nouns, so for SMS
    rel(reversed clip i, text i) = 0.5 * [reversed_verb_i == text_verb_i] + 0.5 * IoU(clip
    nouns, text nouns). It counts as ``weight`` candidates: its term is multiplied by it in the
    hinge losses, and in InfoNCE its logit is that of ``weight`` copies (+ log weight).
    """
    t = _normalize(text)
    sim = jnp.sum(t * _normalize(inputs["reversed_video"]), axis=1, keepdims=True)  # (m, 1)
    extra = jnp.where(inputs["reversed_verb"] >= 0, jnp.float32(weight), 0.0)[:, None]
    rel = rows_t.rel
    if rel is not None:
        # One pair per row (not the (m, m) block): batch_relevance on 1 x 1, mapped over rows.
        pair = lambda *labels: batch_relevance(*(x[None] for x in labels))[0, 0]  # noqa: E731
        rel_rev = jax.vmap(pair)(inputs["reversed_verb"], inputs["clip_nouns"],
                                 inputs["text_verb"], inputs["text_nouns"])
        rel = jnp.concatenate([rel, rel_rev[:, None]], axis=1)
    m = sim.shape[0]
    return _Rows(sim=jnp.concatenate([rows_t.sim, sim], axis=1), pos=rows_t.pos,
                 own=jnp.concatenate([rows_t.own, jnp.zeros((m, 1), bool)], axis=1), rel=rel,
                 c=rows_t.c,
                 weight=jnp.concatenate([jnp.ones(rows_t.sim.shape), extra], axis=1))


def _axis_size(mesh: Mesh, axis_name) -> int:
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    missing = [a for a in names if a not in mesh.shape]
    if missing:
        raise ValueError(f"mesh axes {tuple(mesh.shape)} have no axis {missing}")
    return math.prod(mesh.shape[a] for a in names)


def _per_device(fn, mesh: Mesh | None, axis_name, n: int, in_specs, out_specs):
    """Runs fn(ops, *args) on the whole batch (mesh None) or per device under shard_map."""
    if mesh is None:
        return functools.partial(fn, _LOCAL)
    size = _axis_size(mesh, axis_name)
    if n % size:
        raise ValueError(f"the global batch of {n} pairs does not divide over the {size} devices "
                         f"of mesh axis {axis_name!r}; use a global batch size that is a multiple "
                         f"of {size} (drop the remainder in the input pipeline)")
    mapped = jax.shard_map(functools.partial(fn, _sharded_collectives(axis_name)), mesh=mesh,
                           in_specs=in_specs, out_specs=out_specs)
    if jax.sharding.AxisType.Explicit not in mesh.axis_types:
        return mapped  # on an Auto mesh shard_map moves its inputs itself

    def resharded(*args):
        # On an Explicit mesh the inputs' shardings must already match in_specs: move them
        # (a no-op for embeddings already sharded over the batch axis).
        args = jax.tree.map(lambda x, spec: jax.reshard(x, jax.NamedSharding(mesh, spec)),
                            args, in_specs)
        return mapped(*args)
    return resharded


def make_global_loss(name: str, mesh: Mesh | None = None, axis_name: str | Sequence[str] = "data",
                     reversed_negatives: bool = False, reversed_weight: float = 1.0,
                     **hparams) -> Callable[..., jax.Array]:
    """A retrieval loss over the global batch, for the train step (call it inside jit).

    Args:
      name: one of `LOSS_NAMES` ("sms", "mi_mm", "adaptive_mi_mm", "info_nce").
      mesh: the device mesh, with the batch sharded over ``axis_name``; None on one device.
      axis_name: mesh axis (or tuple of axes) the batch dimension is sharded over.
      reversed_negatives: each text anchor also ranks its own clip played backwards below
        its positive (`_with_reversed_clips`): the loss then takes reversed_video (n, d), the
        embeddings of the reversed clips, and reversed_verb (n,) int, the verb a reversed clip
        shows or -1 for none. The extra terms are added to the text direction's sum with the
        same normalisation, so with every reversed_verb = -1 the loss is the plain one.
      reversed_weight: how many ordinary candidates a reversed clip counts as (1: one more
        negative; n - 1: as much as all the other negatives of its anchor together).
      **hparams: overrides of the loss's DESIGN §6 hyper-parameters (e.g. margin, tau, eps).

    Returns:
      ``loss_fn(video, text, **inputs) -> scalar``: video, text (n, d) global embeddings
      (sharded over ``axis_name`` or not); inputs by loss: sms needs pos_relevance (n,) and the
      class ids clip_verb (n,), clip_nouns (n, K) bool, text_verb (n,), text_nouns (n, K) of each
      pair's clip and sentence; adaptive_mi_mm needs pos_relevance; info_nce needs temperature
      (scalar). The value and gradients equal the single-device loss on the same global batch.
      Each device computes its own anchors against all-gathered embeddings and class ids and
      the partial sums are psum-ed: memory O(n_local x n_global) per device. n must be a
      multiple of the axis size (a clear ValueError otherwise).
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {LOSS_NAMES}")
    spec = _LOSSES[name]
    unknown = set(hparams) - set(spec.defaults)
    if unknown:
        raise ValueError(f"loss {name!r} has no hyper-parameter(s) {sorted(unknown)}; "
                         f"it has {sorted(spec.defaults)}")
    hparams = {**spec.defaults, **hparams}
    expected = spec.inputs + (REVERSED_KEYS if reversed_negatives else ())

    def body(ops, video, text, inputs):
        rows_t, rows_v = _label_directions(video, text, inputs, ops)
        if reversed_negatives:
            rows_t = _with_reversed_clips(rows_t, text, inputs, reversed_weight)
        kw = {**hparams, **{k: v for k, v in inputs.items() if k in _REPLICATED}}
        return ops.psum(spec.row_sum(rows_t, **kw) + spec.row_sum(rows_v, **kw))

    def loss_fn(video, text, **inputs):
        missing = [k for k in expected if k not in inputs]
        extra = [k for k in inputs if k not in expected]
        if missing or extra:
            raise ValueError(f"loss {name!r} takes inputs {expected}; missing {missing}, "
                             f"unexpected {extra}")
        n = _check_batch(video, text)
        inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
        if "reversed_video" in inputs and inputs["reversed_video"].shape != video.shape:
            raise ValueError(f"reversed_video must have the shape of video {video.shape}, got "
                             f"{inputs['reversed_video'].shape}")
        for k, v in inputs.items():
            if k not in _REPLICATED:
                _check_per_sample(k, v, n, ndim=2 if k.endswith(("nouns", "video")) else 1)
        batch_spec = P(axis_name)
        in_specs = (batch_spec, batch_spec,
                    {k: P() if k in _REPLICATED else batch_spec for k in inputs})
        total = _per_device(body, mesh, axis_name, n, in_specs, P())(video, text, inputs)
        return total / _normaliser(spec, n)

    return loss_fn


# ---------------------------------------------------------------------------------------------
# Hard negatives for the ITM cross-encoder.


class HardNegatives(NamedTuple):
    """Per pair i: a negative video for text i and a negative text for video i (global indices).

    video_for_text, text_for_video: (n,) int32; video_valid, text_valid: (n,) bool, False when
    every other candidate is relevant above the threshold (then the index is meaningless and
    the pair must be masked out of `itm_loss`).
    """

    video_for_text: jax.Array
    text_for_video: jax.Array
    video_valid: jax.Array
    text_valid: jax.Array


def _draw(key, rows: _Rows, offset, temperature, threshold):
    """One candidate per anchor row, with probability softmax(sim / temperature) over allowed j."""
    allowed = ~rows.own & (rows.rel <= threshold)
    logits = jnp.where(allowed, jax.lax.stop_gradient(rows.sim) / temperature, -jnp.inf)
    # A key per GLOBAL row: the draw does not depend on how the batch is sharded.
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(offset + jnp.arange(len(logits)))
    idx = jax.vmap(jax.random.categorical)(keys, logits)
    return idx.astype(jnp.int32), jnp.any(allowed, axis=1)


def make_hard_negative_sampler(mesh: Mesh | None = None, axis_name: str | Sequence[str] = "data",
                               *, temperature: float = 0.07,
                               threshold: float = formula.POSITIVE_THRESHOLD
                               ) -> Callable[..., HardNegatives]:
    """In-batch hard negatives for the ITM loss, over the global batch (call inside jit).

    Negatives are drawn in proportion to softmax(cos / temperature) over the in-batch candidates
    (ALBEF/BLIP style; 0.07 is their initial temperature), never the pair itself and never a
    pair whose relevance is above ``threshold`` (the positive threshold of DESIGN §6).

    Returns ``sample(key, video, text, clip_verb, clip_nouns, text_verb, text_nouns) ->
    HardNegatives`` with video, text (n, d) and the class ids as in `make_global_loss`. The
    draws depend only on the key and the global batch, not on the number of devices.
    """

    def body(ops, key, video, text, inputs):
        rows_t, rows_v = _label_directions(video, text, inputs, ops)
        kt, kv = jax.random.split(key)
        offset = ops.offset(video.shape[0])
        video_for_text, video_valid = _draw(kt, rows_t, offset, temperature, threshold)
        text_for_video, text_valid = _draw(kv, rows_v, offset, temperature, threshold)
        return HardNegatives(video_for_text, text_for_video, video_valid, text_valid)

    def sample(key, video, text, clip_verb, clip_nouns, text_verb, text_nouns):
        n = _check_batch(video, text)
        labels = (clip_verb, clip_nouns, text_verb, text_nouns)
        inputs = dict(zip(LABEL_KEYS, map(jnp.asarray, labels)))
        for k, v in inputs.items():
            _check_per_sample(k, v, n, ndim=2 if k.endswith("nouns") else 1)
        batch_spec = P(axis_name)
        in_specs = (P(), batch_spec, batch_spec, {k: batch_spec for k in inputs})
        out_specs = HardNegatives(*(batch_spec,) * 4)
        return _per_device(body, mesh, axis_name, n, in_specs, out_specs)(key, video, text, inputs)

    return sample
