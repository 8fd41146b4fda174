"""Optimiser: AdamW or Lamb with a warmup-cosine schedule, per-parameter lr multipliers and
freezing.

Config (``config.optim``; parameter paths are '/'-joined, see `sharding.path_str`):

    name                   'adamw' | 'lamb': Lamb (You et al., ICLR 2020) is AdamW's update
                           scaled per parameter by the trust ratio ||w|| / ||update|| (optax's
                           `lamb`: EVA02-AT fine-tunes Charades-Ego with it; its code for this
                           is not released)
    lr, start_lr, end_lr   peak lr; linear warmup from start_lr over warmup_steps, then cosine
    warmup_steps           decay to end_lr at the last step (AVION, EVA02-AT schedules)
    warmup_epochs          > 0 with the config's ``epochs``: warmup_steps from epochs
                           (tempret_jax/epochs.py)
    lr_steps               ((step, lr), ...) from step 0, increasing: instead, a piecewise
                           constant lr, each from its step on (EgoVLP's released trainer);
                           () uses the warmup-cosine schedule
    b1, b2, eps            Adam moments
    weight_decay           decoupled (AdamW), not applied to paths matching ``no_decay``
    no_decay               regex: biases, norm scales, position embeddings, the logit scale
    lr_multipliers         ((regex, multiplier), ...): the first match scales that parameter's
                           lr (e.g. a lower lr for a pretrained tower); others use 1
    freeze                 regex: matching parameters get no update and no optimiser state
                           ('' freezes nothing)
    clip_grad_norm         global-norm clipping of the trainable gradients (0: off)
    ema_decay              EMA of the weights kept next to them (0: off; the step updates it, evaluation uses it)
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tempret_jax.sharding import path_str

OPTIMIZERS = ("adamw", "lamb")
NO_DECAY = (r"(^|/)(bias|scale)$|positional_embedding|temporal_embedding|class_embedding"
            r"|logit_scale")
FROZEN = "frozen"


def optim_config(**overrides) -> ml_collections.ConfigDict:
    """The defaults (CLIP fine-tuning style, as AVION), updated with ``overrides``."""
    c = ml_collections.ConfigDict(dict(
        name="adamw", lr=3e-5, start_lr=1e-6, end_lr=1e-5, warmup_steps=0, warmup_epochs=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, no_decay=NO_DECAY, lr_multipliers=(),
        freeze="", lr_steps=(), clip_grad_norm=0.0, ema_decay=0.0))
    c.update(overrides)
    return c


def learning_rate_schedule(c: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup start_lr -> lr over warmup_steps, cosine lr -> end_lr at total_steps;
    with ``lr_steps``, their piecewise constant lr."""
    if c.get("lr_steps"):
        return _piecewise(c.lr_steps)
    if not 0 <= c.warmup_steps <= total_steps:
        raise ValueError(f"optim.warmup_steps: expected 0..total_steps={total_steps}, "
                         f"got {c.warmup_steps}")
    return optax.warmup_cosine_decay_schedule(
        init_value=c.start_lr, peak_value=c.lr, warmup_steps=c.warmup_steps,
        decay_steps=max(total_steps, 1), end_value=c.end_lr)


def _piecewise(lr_steps) -> optax.Schedule:
    starts = [int(step) for step, _ in lr_steps]
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"optim.lr_steps: expected (step, lr) pairs from step 0 with "
                         f"increasing steps, got {tuple(map(tuple, lr_steps))}")
    boundaries = jnp.asarray(starts[1:], jnp.int32)
    values = jnp.asarray([float(lr) for _, lr in lr_steps], jnp.float32)
    return lambda count: values[jnp.searchsorted(boundaries, count, side="right")]


def _compile(key: str, regex: str) -> re.Pattern:
    try:
        return re.compile(regex)
    except re.error as e:
        raise ValueError(f"optim.{key}: invalid regex {regex!r}: {e}") from None


def param_groups(c: ml_collections.ConfigDict, params) -> tuple[dict, object]:
    """Groups parameters by lr multiplier.

    Returns ({group label: multiplier}, labels): labels is the params tree with each leaf's
    group label, FROZEN for frozen parameters.
    """
    freeze = _compile("freeze", c.freeze) if c.freeze else None
    rules = [(_compile("lr_multipliers", regex), float(mult)) for regex, mult in c.lr_multipliers]
    groups = {}

    def label(path, _):
        name = path_str(path)
        if freeze is not None and freeze.search(name):
            return FROZEN
        mult = next((m for regex, m in rules if regex.search(name)), 1.0)
        group = f"lr_x{mult:g}"
        groups[group] = mult
        return group

    labels = jax.tree_util.tree_map_with_path(label, params)
    return groups, labels


def _decay_mask(no_decay: re.Pattern):
    """A callable mask (True: decay) for the possibly partial trees optax passes to a group."""
    return lambda tree: jax.tree_util.tree_map_with_path(
        lambda path, _: not no_decay.search(path_str(path)), tree)


def make_optimizer(c: ml_collections.ConfigDict, params, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimiser for ``params`` (a tree of arrays or ShapeDtypeStructs) and its schedule.

    Frozen parameters get zero updates and hold no Adam moments; clipping sees only the
    trainable gradients; each multiplier group runs AdamW (or Lamb) at multiplier x schedule.
    """
    if c.get("name", "adamw") not in OPTIMIZERS:
        raise ValueError(f"optim.name: expected one of {OPTIMIZERS}, got {c.name!r}")
    trust_ratio = [optax.scale_by_trust_ratio()] if c.get("name") == "lamb" else []
    schedule = learning_rate_schedule(c, total_steps)
    groups, labels = param_groups(c, params)
    no_decay = _compile("no_decay", c.no_decay)

    def adamw(mult):
        return optax.chain(
            optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps),
            optax.add_decayed_weights(c.weight_decay, mask=_decay_mask(no_decay)),
            *trust_ratio,
            optax.scale_by_learning_rate(lambda step: mult * schedule(step)))

    frozen = jax.tree.map(lambda label: label == FROZEN, labels)
    transforms = {FROZEN: optax.set_to_zero(), **{g: adamw(m) for g, m in groups.items()}}
    chain = [optax.masked(optax.set_to_zero(), frozen)]  # before clipping: norm of trainables
    if c.clip_grad_norm > 0:
        chain.append(optax.clip_by_global_norm(c.clip_grad_norm))
    chain.append(optax.multi_transform(transforms, labels))
    return optax.chain(*chain), schedule
