"""Retrieval losses over the global batch under data parallelism (docs/design.md, Losses).

Each device computes the `losses.Direction` of its own anchors against the all-gathered
embeddings and class ids (relevance blocks are built per device from the ids, so no device holds
more than (n_local, n_global) of them) and the partial sums are psum-ed under `jax.shard_map`:
the value and gradients equal the single-device loss of `tempret_jax.losses` on the same global
batch. Here too: the time-reversed clips as extra negatives of their text (`make_global_loss`)
and the in-batch hard negatives of the ITM cross-encoder (`make_hard_negative_sampler`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from tempret_jax import losses, relevance

# Inputs of the time-reversed negatives (`make_global_loss(..., reversed_negatives=True)`).
REVERSED_KEYS = ("reversed_video", "reversed_verb")


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


def _ek100_relevance(inputs, gather):
    """(rel_t, rel_v) of SMS and the ITM sampler: EK-100 relevance from the class ids."""
    cv, cn, tv, tn = (inputs[k] for k in losses.LABEL_KEYS)
    # text i vs clip j: rel(clip j, text i); video i vs text j: rel(clip i, text j).
    return (losses.batch_relevance(tv, tn, gather(cv), gather(cn)),
            losses.batch_relevance(cv, cn, gather(tv), gather(tn)))


def _egonce_relevance(inputs, gather):
    """(rel_t, rel_v) of EgoNCE: one symmetric block from the narrations' tags."""
    verbs, nouns = (inputs[k] for k in losses.EGONCE_KEYS)
    rel = losses.shared_action(verbs, nouns, gather(verbs), gather(nouns))
    return rel, rel


def _hard_label_relevance(inputs, gather):
    """(rel_t, rel_v) of SMS on hard labels: 1 where the text's class is one of the clip's."""
    classes, text_class = (inputs[k] for k in losses.HARD_LABEL_KEYS)
    # text i vs clip j: is text i's class one of clip j's; video i vs text j: the other way.
    return (losses.class_membership(gather(classes), text_class).T,
            losses.class_membership(classes, gather(text_class)))


# How each loss that needs one builds the relevance of its local rows to the gathered batch.
_RELEVANCE = {"sms": _ek100_relevance, "egonce": _egonce_relevance,
              "sms_hard": _hard_label_relevance}


def _label_directions(video, text, inputs, ops: _Collectives, relevance=None):
    """The text and video directions of the local rows against the gathered batch.

    ``relevance(inputs, gather) -> (rel_t, rel_v)`` builds the relevance blocks from class
    ids, so no device holds more than (n_local, n_global) of them; None: no relevance.
    """
    v, t = losses.normalize(video), losses.normalize(text)
    v_all, t_all = ops.gather(v), ops.gather(t)
    offset = ops.offset(v.shape[0])
    c = inputs.get("pos_relevance")
    c = None if c is None else c.astype(jnp.float32)
    rel_t, rel_v = (None, None) if relevance is None else relevance(inputs, ops.gather)
    return (losses.Direction.of(t, v_all, offset, rel_t, c),
            losses.Direction.of(v, t_all, offset, rel_v, c))


def _with_reversed_clips(rows_t: losses.Direction, text, inputs,
                         weight: float) -> losses.Direction:
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
    t = losses.normalize(text)
    reversed_video = losses.normalize(inputs["reversed_video"])
    sim = jnp.sum(t * reversed_video, axis=1, keepdims=True)  # (m, 1)
    extra = jnp.where(inputs["reversed_verb"] >= 0, jnp.float32(weight), 0.0)[:, None]
    rel = rows_t.rel
    if rel is not None:
        # One pair per row (not the (m, m) block): batch_relevance on 1 x 1, mapped over rows.
        pair = lambda *ids: losses.batch_relevance(*(x[None] for x in ids))[0, 0]  # noqa: E731
        rel_rev = jax.vmap(pair)(inputs["reversed_verb"], inputs["clip_nouns"],
                                 inputs["text_verb"], inputs["text_nouns"])
        rel = jnp.concatenate([rel, rel_rev[:, None]], axis=1)
    m = sim.shape[0]
    return losses.Direction(
        sim=jnp.concatenate([rows_t.sim, sim], axis=1), pos=rows_t.pos,
        own=jnp.concatenate([rows_t.own, jnp.zeros((m, 1), bool)], axis=1), rel=rel, c=rows_t.c,
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
      name: one of `losses.LOSS_NAMES` ("sms", "mi_mm", "adaptive_mi_mm", "info_nce",
        "egonce").
      mesh: the device mesh, with the batch sharded over ``axis_name``; None on one device.
      axis_name: mesh axis (or tuple of axes) the batch dimension is sharded over.
      reversed_negatives: (a loss of `losses.REVERSED_LOSSES`) each text anchor also ranks
        its own clip played backwards below its positive (`_with_reversed_clips`): the loss
        then takes reversed_video (n, d), the embeddings of the reversed clips, and
        reversed_verb (n,) int, the verb a reversed clip shows or -1 for none. The extra terms
        are added to the text direction's sum with the same normalisation, so with every
        reversed_verb = -1 the loss is the plain one.
      reversed_weight: how many ordinary candidates a reversed clip counts as (1: one more
        negative; n - 1: as much as all the other negatives of its anchor together).
      **hparams: overrides of the loss's hyper-parameters (docs/design.md, Losses; e.g.
        margin, tau, eps).

    Returns:
      ``loss_fn(video, text, **inputs) -> scalar``: video, text (n, d) global embeddings
      (sharded over ``axis_name`` or not); inputs by loss: sms needs pos_relevance (n,) and the
      class ids clip_verb (n,), clip_nouns (n, K) bool, text_verb (n,), text_nouns (n, K) of each
      pair's clip and sentence; adaptive_mi_mm needs pos_relevance; info_nce needs temperature
      (scalar); egonce needs text_verbs (n, V) and text_nouns (n, K) bool, the tags of each pair's
      narration, and its global batch holds the adjacent clips as pairs of their own
      (`losses.egonce_loss`); `losses.inputs(name)` lists them. The value and gradients equal the
      single-device loss on the same global batch. Each device computes its own anchors
      against all-gathered embeddings and class ids and the partial sums are psum-ed: memory
      O(n_local x n_global) per device. n must be a multiple of the axis size (a clear
      ValueError otherwise).
    """
    loss = losses.spec(name)
    unknown = set(hparams) - set(loss.defaults)
    if unknown:
        raise ValueError(f"loss {name!r} has no hyper-parameter(s) {sorted(unknown)}; "
                         f"it has {sorted(loss.defaults)}")
    if reversed_negatives and name not in losses.REVERSED_LOSSES:
        raise ValueError(f"reversed_negatives work with losses {losses.REVERSED_LOSSES}, "
                         f"not {name!r}")
    hparams = {**loss.defaults, **hparams}
    expected = loss.inputs + (REVERSED_KEYS if reversed_negatives else ())

    def body(ops, video, text, inputs):
        rows_t, rows_v = _label_directions(video, text, inputs, ops, _RELEVANCE.get(name))
        if reversed_negatives:
            rows_t = _with_reversed_clips(rows_t, text, inputs, reversed_weight)
        kw = {**hparams, **{k: v for k, v in inputs.items() if k in losses.REPLICATED_INPUTS}}
        return ops.psum(loss.row_sum(rows_t, **kw) + loss.row_sum(rows_v, **kw))

    def loss_fn(video, text, **inputs):
        missing = [k for k in expected if k not in inputs]
        extra = [k for k in inputs if k not in expected]
        if missing or extra:
            raise ValueError(f"loss {name!r} takes inputs {expected}; missing {missing}, "
                             f"unexpected {extra}")
        n = losses.check_batch(video, text)
        inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
        if "reversed_video" in inputs and inputs["reversed_video"].shape != video.shape:
            raise ValueError(f"reversed_video must have the shape of video {video.shape}, got "
                             f"{inputs['reversed_video'].shape}")
        for k, v in inputs.items():
            if k not in losses.REPLICATED_INPUTS:
                multi = k.endswith(("nouns", "verbs", "classes", "video"))  # sets, embeddings
                losses.check_per_sample(k, v, n, ndim=2 if multi else 1)
        batch_spec = P(axis_name)
        in_specs = (batch_spec, batch_spec,
                    {k: P() if k in losses.REPLICATED_INPUTS else batch_spec for k in inputs})
        total = _per_device(body, mesh, axis_name, n, in_specs, P())(video, text, inputs)
        return total / loss.normaliser(n)

    return loss_fn


# ---------------------------------------------------------------------------------------------
# Hard negatives for the ITM cross-encoder.


class HardNegatives(NamedTuple):
    """Per pair i: a negative video for text i and a negative text for video i (global indices).

    video_for_text, text_for_video: (n,) int32; video_valid, text_valid: (n,) bool, False when
    every other candidate is relevant above the threshold (then the index is meaningless and
    the pair must be masked out of `losses.itm_loss`).
    """

    video_for_text: jax.Array
    text_for_video: jax.Array
    video_valid: jax.Array
    text_valid: jax.Array


def _draw(key, rows: losses.Direction, offset, temperature, threshold):
    """One candidate per anchor row, with probability softmax(sim / temperature) over allowed j."""
    allowed = ~rows.own & (rows.rel <= threshold)
    logits = jnp.where(allowed, jax.lax.stop_gradient(rows.sim) / temperature, -jnp.inf)
    # A key per GLOBAL row: the draw does not depend on how the batch is sharded.
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(offset + jnp.arange(len(logits)))
    idx = jax.vmap(jax.random.categorical)(keys, logits)
    return idx.astype(jnp.int32), jnp.any(allowed, axis=1)


def make_hard_negative_sampler(mesh: Mesh | None = None, axis_name: str | Sequence[str] = "data",
                               *, temperature: float = 0.07,
                               threshold: float = relevance.POSITIVE_THRESHOLD
                               ) -> Callable[..., HardNegatives]:
    """In-batch hard negatives for the ITM loss, over the global batch (call inside jit).

    Negatives are drawn in proportion to softmax(cos / temperature) over the in-batch candidates
    (ALBEF/BLIP style; 0.07 is their initial temperature), never the pair itself and never a
    pair whose relevance is above ``threshold`` (the positive threshold, docs/design.md,
    Losses).

    Returns ``sample(key, video, text, clip_verb, clip_nouns, text_verb, text_nouns) ->
    HardNegatives`` with video, text (n, d) and the class ids as in `make_global_loss`. The
    draws depend only on the key and the global batch, not on the number of devices.
    """

    def body(ops, key, video, text, inputs):
        rows_t, rows_v = _label_directions(video, text, inputs, ops, _ek100_relevance)
        kt, kv = jax.random.split(key)
        offset = ops.offset(video.shape[0])
        video_for_text, video_valid = _draw(kt, rows_t, offset, temperature, threshold)
        text_for_video, text_valid = _draw(kv, rows_v, offset, temperature, threshold)
        return HardNegatives(video_for_text, text_for_video, video_valid, text_valid)

    def sample(key, video, text, clip_verb, clip_nouns, text_verb, text_nouns):
        n = losses.check_batch(video, text)
        labels = (clip_verb, clip_nouns, text_verb, text_nouns)
        inputs = dict(zip(losses.LABEL_KEYS, map(jnp.asarray, labels)))
        for k, v in inputs.items():
            losses.check_per_sample(k, v, n, ndim=2 if k.endswith("nouns") else 1)
        batch_spec = P(axis_name)
        in_specs = (P(), batch_spec, batch_spec, {k: batch_spec for k in inputs})
        out_specs = HardNegatives(*(batch_spec,) * 4)
        return _per_device(body, mesh, axis_name, n, in_specs, out_specs)(key, video, text, inputs)

    return sample
