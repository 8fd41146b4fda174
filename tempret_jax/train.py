"""Sharded training: the train step, the loop, evaluation inside it, checkpoints, logging.

    python -m tempret_jax.main --config configs/X.py --workdir DIR   (main calls
    `train_and_evaluate(config, workdir)`; `evaluate(config, workdir)` scores a trained run)

Two stages (``config.stage``):
  1. the dual encoder on a retrieval loss over the global batch (``loss.name``: sms, mi_mm,
     adaptive_mi_mm, info_nce; `losses.make_global_loss`);
  2. the ITM cross-encoder on the positive pairs and in-batch hard negatives
     (`losses.make_hard_negative_sampler`, `losses.itm_loss`), usually from a stage-1 run via
     ``init_from``; the dual encoder frozen (``itm.freeze_dual_encoder``) or trained jointly,
     optionally still on its retrieval loss (``itm.dual_loss_weight``).

Global batch and gradient accumulation. The batch is split over every mesh axis (data, fsdp).
With ``microbatches`` = k > 1 the towers run k times on global_batch / k examples, but the
loss is still the loss of the whole global batch (all in-batch negatives, as the papers train
with): the towers' outputs are first computed without gradients, the loss and its gradient
with respect to those outputs are taken over the global batch, then each microbatch's towers
are re-run and back-propagated with their slice of that gradient (GradCache). Gradients equal
those of k = 1 up to float rounding, at the cost of one extra forward pass.

Config (`default_config()` holds every key with its default; configs/ override them):

    name                  experiment name (written to metrics.json)
    seed                  parameter init, data order, hard-negative draws
    stage                 1 | 2
    dataset_dir           a prepared data set (`tempret_jax.data.prepare`)
    total_steps           optimiser steps
    global_batch_size     pairs per step over all processes; a multiple of
                          microbatches x (number of devices)
    microbatches          k, see above
    mesh.{data, fsdp}     mesh axis sizes (-1: the remaining devices)
    mesh.rules            ((regex, PartitionSpec tuple), ...) parameter sharding overrides
    mesh.fsdp_min_size    parameters smaller than this stay replicated
    model                 `models.retrieval.model_config` (compute dtype: model.dtype)
    loss.name, loss.hparams   retrieval loss and overrides of its DESIGN §6 hyper-parameters
    loss.reversed_negatives   ((verb_a, verb_b), ...) verb classes that are each other's time
                          reversal; each such clip played backwards becomes a hard negative for
                          its own sentence (TACT, `losses.make_global_loss`). () = off (the
                          papers' EK-100 recipes); in joint mode it doubles the video tower's work
    loss.reversed_weight  how many ordinary negatives one reversed clip counts as
    itm.{freeze_dual_encoder, dual_loss_weight, temperature}   stage 2 (temperature of the
                          hard-negative draw)
    optim                 `optim.optim_config` (AdamW, schedule, multipliers, freeze, clip, EMA)
    data.{train_split, num_frames, resolution, crop_scale, num_workers}
    data.dtype            of the clips the towers get (train crops are resampled on the device)
    data.positive_threshold   sampled positives have rel > this (DESIGN §6: 0.1)
    eval.{every_steps (0: only at the end; -1: never), split, batch_size, tta, tta_views,
          tta_reduce, dual_softmax, rerank.*, submission_sls, num_workers, chunk}
                          (see `evaluate`: periodic evaluation uses all but rerank)
    checkpoint.{every_steps, keep, keep_best, best_metric, async_save}
    init_from.{path, step, include, exclude}   load parameters before step 0 (see
                          `checkpoint.load_flat_params`, `checkpoint.merge_params`)
    log_every             steps between JSON-lines / TensorBoard records

Outputs in the workdir: checkpoints/, train_metrics.jsonl (loss, lr, grad norm, clips/s),
metrics.jsonl (one line per evaluation), metrics.json (the latest evaluation), tensorboard/.
A non-finite loss or gradient stops the run with `NonFiniteLossError` (step, narration_ids)
before anything is saved; SIGTERM saves a checkpoint and returns (``preempted``) so the
process exits 0 and a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.sharding import PartitionSpec as P

from tempret_jax import checkpoint as checkpoint_lib
from tempret_jax import evaluate as evaluate_lib
from tempret_jax import losses
from tempret_jax import metrics as metrics_lib
from tempret_jax import optim
from tempret_jax import sharding as sharding_lib
from tempret_jax.data import crops, ek100, pipeline, prepare
from tempret_jax.models import retrieval

# Per-batch inputs of each retrieval loss besides the embeddings ("temperature" comes from the
# model's logit scale, the others from the batch); see `losses.make_global_loss`.
LOSS_INPUTS = {
    "sms": ("pos_relevance",) + losses.LABEL_KEYS,
    "mi_mm": (),
    "adaptive_mi_mm": ("pos_relevance",),
    "info_nce": ("temperature",),
}
assert set(LOSS_INPUTS) == set(losses.LOSS_NAMES), "LOSS_INPUTS is out of date with losses.py"
# Sent to the devices, with either the pipeline's crops (`pipeline.CROP_KEYS`, resampled on the
# device) or "video": ready (n, T, R, R, 3) clips.
MODEL_KEYS = ("tokens", "pos_relevance") + losses.LABEL_KEYS
MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) at 100
DUAL_ENCODER_FREEZE = r"^(?!cross_encoder/)"  # stage 2 with a frozen dual encoder


def default_config() -> ml_collections.ConfigDict:
    """Every training key with its default (a tiny model; configs/ set the real sizes)."""
    c = ml_collections.ConfigDict()
    c.name = "train"
    c.seed = 0
    c.stage = 1
    c.dataset_dir = ""
    c.total_steps = 100
    c.global_batch_size = 8
    c.microbatches = 1
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, rules=(), fsdp_min_size=2 ** 14))
    c.model = retrieval.model_config("tiny")
    c.loss = ml_collections.ConfigDict(dict(name="sms", hparams={}, reversed_negatives=(),
                                            reversed_weight=1.0))
    c.itm = ml_collections.ConfigDict(dict(freeze_dual_encoder=True, dual_loss_weight=0.0,
                                           temperature=0.07))
    c.optim = optim.optim_config()
    c.data = ml_collections.ConfigDict(dict(train_split="train", positive_threshold=0.1,
                                            num_frames=4, resolution=32,
                                            crop_scale=(0.5, 1.0), num_workers=0,
                                            dtype="float32"))
    c.eval = ml_collections.ConfigDict(dict(
        every_steps=0, split="test", batch_size=16, tta=False,
        tta_views=("orig", "flip", "scale=0.875", "scale=1.125"), tta_reduce="mean",
        dual_softmax=False, submission_sls=(4, 3, 3), num_workers=0, chunk=1024))
    c.eval.rerank = ml_collections.ConfigDict(dict(
        k=0, alpha=1.0, alphas=(), tune_split="train", tune_clips=256,
        curve_ks=(1, 5, 10, 20, 50, 100), batch_size=64))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=2, keep_best=1,
                                                  best_metric="mAP_avg", async_save=True))
    c.init_from = ml_collections.ConfigDict(dict(path="", step=-1, include=".*", exclude=""))
    c.log_every = 10
    return c


def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ValueError(f"train config: {key}: expected {expected}, got {got!r}")


def validate_config(c: ml_collections.ConfigDict, num_devices: int, process_count: int) -> None:
    """Raises ValueError naming the first bad key (model keys: `retrieval.validate_config`)."""
    _check(c.stage in (1, 2), "stage", "1 or 2", c.stage)
    _check(c.loss.name in losses.LOSS_NAMES, "loss.name", f"one of {losses.LOSS_NAMES}",
           c.loss.name)
    _check(c.total_steps >= 1, "total_steps", ">= 1", c.total_steps)
    _check(c.microbatches >= 1, "microbatches", ">= 1", c.microbatches)
    unit = c.microbatches * num_devices
    _check(c.global_batch_size % unit == 0 and c.global_batch_size // c.microbatches >= 2,
           "global_batch_size", f"a multiple of microbatches x devices = {unit} with at least 2 "
           f"pairs per microbatch", c.global_batch_size)
    _check(c.global_batch_size % process_count == 0, "global_batch_size",
           f"a multiple of the {process_count} processes", c.global_batch_size)
    _check(c.eval.batch_size % num_devices == 0, "eval.batch_size",
           f"a multiple of the {num_devices} devices", c.eval.batch_size)
    _check(c.stage == 1 or c.model.cross_encoder.enabled, "model.cross_encoder.enabled",
           "True for stage 2", c.model.cross_encoder.enabled)
    _check(c.data.num_frames == c.model.vision.num_frames, "data.num_frames",
           f"model.vision.num_frames = {c.model.vision.num_frames}", c.data.num_frames)
    _check(c.data.resolution == c.model.vision.image_size, "data.resolution",
           f"model.vision.image_size = {c.model.vision.image_size}", c.data.resolution)
    _check(0 <= c.optim.ema_decay < 1, "optim.ema_decay", "in [0, 1)", c.optim.ema_decay)
    _check(c.checkpoint.every_steps >= 1, "checkpoint.every_steps", ">= 1",
           c.checkpoint.every_steps)
    pairs = [tuple(p) for p in c.loss.reversed_negatives]
    verbs = [v for p in pairs for v in p]
    _check(all(len(p) == 2 for p in pairs) and all(isinstance(v, int) and v >= 0 for v in verbs)
           and len(set(verbs)) == len(verbs), "loss.reversed_negatives",
           "pairs (verb_a, verb_b) of distinct verb class ids >= 0, each verb in one pair",
           c.loss.reversed_negatives)
    _check(c.loss.reversed_weight > 0, "loss.reversed_weight", "> 0", c.loss.reversed_weight)


# ---------------------------------------------------------------------------------------------
# State and step.


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. rng: raw uint32 key data (2,); ema_params: None without EMA."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm of a step was NaN/Inf; nothing after the last good
    checkpoint was saved."""

    def __init__(self, step: int, narration_ids: Sequence[str], values: dict):
        self.step, self.narration_ids, self.values = step, list(narration_ids), values
        super().__init__(f"non-finite training values {values} at step {step}; this process's "
                         f"batch held narration_ids {self.narration_ids}")


def _add_trees(a, b):
    return jax.tree.map(jnp.add, a, b)


class Trainer:
    """The model, optimiser and jitted train step of a config on a mesh.

    Methods: `init_state`, `abstract_state`, `train_step` (process-local numpy batch in),
    `gradients`, `load_init` (init_from), `eval_params`.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
        validate_config(config, mesh.size, jax.process_count())
        self.config, self.mesh = config, mesh
        self.model = retrieval.RetrievalModel.from_config(config.model)
        self.stage2 = config.stage == 2
        optim_config = ml_collections.ConfigDict(config.optim.to_dict())
        if self.stage2 and config.itm.freeze_dual_encoder:
            optim_config.freeze = (f"(?:{optim_config.freeze})|{DUAL_ENCODER_FREEZE}"
                                   if optim_config.freeze else DUAL_ENCODER_FREEZE)
        abstract_params = jax.eval_shape(self._init_params, jax.random.key(0))
        self.tx, self.schedule = optim.make_optimizer(optim_config, abstract_params,
                                                      config.total_steps)
        _, labels = optim.param_groups(optim_config, abstract_params)
        self.trainable = jax.tree.map(lambda label: label != optim.FROZEN, labels)
        self.use_dual_loss = not self.stage2 or config.itm.dual_loss_weight > 0
        self.reversed_pairs = tuple(tuple(p) for p in config.loss.reversed_negatives)
        self.reversed = bool(self.reversed_pairs) and self.use_dual_loss
        self.loss_fn = losses.make_global_loss(config.loss.name, mesh, sharding_lib.BATCH_AXES,
                                               reversed_negatives=self.reversed,
                                               reversed_weight=config.loss.reversed_weight,
                                               **dict(config.loss.hparams))
        self.sampler = losses.make_hard_negative_sampler(
            mesh, sharding_lib.BATCH_AXES, temperature=config.itm.temperature)

        param_specs = sharding_lib.partition_specs(
            abstract_params, mesh, [tuple(r) for r in config.mesh.rules],
            config.mesh.fsdp_min_size)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        specs = TrainState(step=P(), params=param_specs,
                           opt_state=_state_specs(abstract_opt, param_specs), rng=P(),
                           ema_params=param_specs if config.optim.ema_decay > 0 else None)
        self.state_shardings = sharding_lib.named(mesh, specs)
        batch_sharding = sharding_lib.batch_sharding(mesh)
        self._step = jax.jit(self._train_step,
                             in_shardings=(self.state_shardings, batch_sharding),
                             out_shardings=(self.state_shardings, sharding_lib.replicated(mesh)),
                             donate_argnums=0)
        self._gradients = jax.jit(
            lambda state, batch: self._grads(state.params, batch, self._step_rng(state)),
            in_shardings=(self.state_shardings, batch_sharding),
            out_shardings=(None, None, self.state_shardings.params))

    # -- initialisation -----------------------------------------------------------------------

    def _init_params(self, key):
        v = self.config.model.vision
        video = jnp.zeros((1, v.num_frames, v.image_size, v.image_size, 3), jnp.float32)
        ids = jnp.zeros((1, self.config.model.text.context_length), jnp.int32)
        return self.model.init(key, video, ids)["params"]

    def _init_state(self, seed) -> TrainState:
        init_key, rng = jax.random.split(jax.random.key(seed))
        params = self._init_params(init_key)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), rng=jax.random.key_data(rng),
                          ema_params=params if self.config.optim.ema_decay > 0 else None)

    def init_state(self) -> TrainState:
        """A fresh state, created directly in its shardings."""
        return jax.jit(self._init_state, static_argnums=0,
                       out_shardings=self.state_shardings)(self.config.seed)

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs with shardings, for restoring."""
        shapes = jax.eval_shape(self._init_state, self.config.seed)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.state_shardings)

    def load_init(self, state: TrainState, init_from: ml_collections.ConfigDict) -> TrainState:
        """``init_from``: parameters (and the EMA copy) from another checkpoint, by regex."""
        source = checkpoint_lib.load_flat_params(init_from.path,
                                                 init_from.step if init_from.step >= 0 else None)
        params = checkpoint_lib.merge_params(state.params, source, init_from.include,
                                             init_from.exclude, source_name=init_from.path)
        ema = params if state.ema_params is not None else None
        return state.replace(params=params, ema_params=ema)

    def eval_params(self, state: TrainState):
        """The parameters to evaluate: the EMA when kept, else the live ones."""
        return state.ema_params if state.ema_params is not None else state.params

    # -- the loss -----------------------------------------------------------------------------

    def _encode(self, params, video, tokens):
        """The per-example part: tower outputs (differentiable dict) and the text mask."""
        v = self.model.apply({"params": params}, video, self.reversed,
                             method=self.model.encode_video)
        t = self.model.apply({"params": params}, tokens, method=self.model.encode_text)
        out = {"video": v["features"], "text": t["features"]}
        if self.reversed:
            out["reversed_video"] = v["reversed_features"]
        if self.stage2:
            out.update(video_tokens=v["tokens"], text_tokens=t["tokens"])
        return out, t["mask"]

    def _head_loss(self, params, enc, text_mask, batch, rng):
        """The global-batch part: refinement, embeddings, losses. Returns (loss, metrics)."""
        variables = {"params": params}
        video = self.model.apply(variables, enc["video"], enc["text"],
                                 method=self.model.embed_video)
        text = self.model.apply(variables, enc["text"], enc["video"],
                                method=self.model.embed_text)
        scale = jnp.minimum(jnp.exp(params["logit_scale"]), MAX_LOGIT_SCALE)
        out = {"temperature": 1.0 / scale}
        total = 0.0
        if self.use_dual_loss:
            inputs = {k: batch[k] for k in LOSS_INPUTS[self.config.loss.name] if k in batch}
            if "temperature" in LOSS_INPUTS[self.config.loss.name]:
                inputs["temperature"] = 1.0 / scale
            if self.reversed:
                inputs["reversed_video"] = self.model.apply(
                    variables, enc["reversed_video"], enc["text"], method=self.model.embed_video)
                inputs["reversed_verb"] = self._reversed_verb(batch["clip_verb"])
            out["retrieval_loss"] = self.loss_fn(video, text, **inputs)
            weight = self.config.itm.dual_loss_weight if self.stage2 else 1.0
            total = total + weight * out["retrieval_loss"]
        if self.stage2:
            out["itm_loss"], out["itm_accuracy"] = self._itm(params, enc, text_mask, video, text,
                                                             batch, rng)
            total = total + out["itm_loss"]
        return total, out

    def _reversed_verb(self, clip_verb):
        """(n,) the verb each clip shows when played backwards, -1 for verbs without a pair."""
        out = jnp.full_like(clip_verb, -1)
        for a, b in self.reversed_pairs:
            out = jnp.where(clip_verb == a, b, jnp.where(clip_verb == b, a, out))
        return out

    def _itm(self, params, enc, text_mask, video, text, batch, rng):
        """ITM loss and accuracy on the n positives and 2n hard negatives."""
        neg = self.sampler(rng, video, text, *(batch[k] for k in losses.LABEL_KEYS))
        score = lambda t, m, v: self.model.apply(  # noqa: E731
            {"params": params}, t, m, v, method=self.model.score_pairs)
        t_tok, v_tok = enc["text_tokens"], enc["video_tokens"]
        logits = jnp.concatenate([
            score(t_tok, text_mask, v_tok),
            score(t_tok, text_mask, v_tok[neg.video_for_text]),
            score(t_tok[neg.text_for_video], text_mask[neg.text_for_video], v_tok)])
        n = video.shape[0]
        labels = jnp.concatenate([jnp.ones(n), jnp.zeros(2 * n)])
        mask = jnp.concatenate([jnp.ones(n, bool), neg.video_valid, neg.text_valid])
        correct = ((logits > 0) == (labels > 0.5)) & mask
        return losses.itm_loss(logits, labels, mask), correct.sum() / jnp.maximum(mask.sum(), 1)

    # -- gradients ----------------------------------------------------------------------------

    def _split(self, x):
        """(n, ...) -> (k, n / k, ...): microbatch m takes the m-th slice of every device's rows,
        so each microbatch stays spread over all devices and the split moves no data."""
        k, d = self.config.microbatches, sharding_lib.batch_devices(self.mesh)
        per = x.shape[0] // (d * k)
        y = x.reshape((d, k, per) + x.shape[1:]).swapaxes(0, 1).reshape((k, d * per) + x.shape[1:])
        return jax.lax.with_sharding_constraint(
            y, jax.NamedSharding(self.mesh, P(None, sharding_lib.BATCH_AXES)))

    def _merge(self, y):
        """The inverse of `_split`: (k, n / k, ...) -> (n, ...)."""
        k, d = self.config.microbatches, sharding_lib.batch_devices(self.mesh)
        per = y.shape[1] // d
        x = y.reshape((k, d, per) + y.shape[2:]).swapaxes(0, 1).reshape((-1,) + y.shape[2:])
        return jax.lax.with_sharding_constraint(x, sharding_lib.batch_sharding(self.mesh))

    def _grads(self, params, batch, rng):
        """(loss, metrics, grads) of the global batch; see the module docstring for k > 1."""
        video = self._video(batch)
        if self.config.microbatches == 1:
            def loss(p):
                enc, text_mask = self._encode(p, video, batch["tokens"])
                return self._head_loss(p, enc, text_mask, batch, rng)
            (value, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
            return value, out, grads

        inputs = (self._split(video), self._split(batch["tokens"]))

        def forward(_, xs):
            return None, self._encode(params, *xs)

        _, (enc, text_mask) = jax.lax.scan(forward, None, inputs)
        enc, text_mask = jax.tree.map(self._merge, (jax.lax.stop_gradient(enc), text_mask))
        (value, out), (g_head, g_enc) = jax.value_and_grad(
            self._head_loss, argnums=(0, 1), has_aux=True)(params, enc, text_mask, batch, rng)

        def backward(acc, xs):
            micro, cotangent = xs
            _, vjp = jax.vjp(lambda p: self._encode(p, *micro)[0], params)
            return _add_trees(acc, vjp(cotangent)[0]), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        g_towers, _ = jax.lax.scan(backward, zeros, (inputs, jax.tree.map(self._split, g_enc)))
        return value, out, _add_trees(g_head, g_towers)

    def _video(self, batch):
        """(n, T, R, R, 3) data.dtype clips: the batch's own "video", or its crops resampled."""
        if "video" in batch:
            return batch["video"]
        d = self.config.data
        return crops.resized_crops(batch["frames"], batch["crop_box"], batch["crop_window"],
                                   d.resolution, d.dtype)

    @staticmethod
    def _step_rng(state: TrainState):
        return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def _train_step(self, state: TrainState, batch: dict):
        loss, out, grads = self._grads(state.params, batch, self._step_rng(state))
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            decay = self.config.optim.ema_decay
            ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        trainable_grads = jax.tree.map(lambda g, t: g if t else jnp.zeros((), g.dtype),
                                       grads, self.trainable)
        out = {**out, "loss": loss, "grad_norm": optax.tree.norm(trainable_grads),
               "lr": self.schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             ema_params=ema), out

    def train_step(self, state: TrainState, local_batch: dict):
        """One step on this process's rows of the global batch (numpy, from the pipeline:
        `MODEL_KEYS` and either `pipeline.CROP_KEYS` or "video").

        Returns (new state, metrics {name: replicated scalar}); ``state`` is donated.
        """
        return self._step(state, self._global(local_batch))

    def gradients(self, state: TrainState, local_batch: dict):
        """(loss, metrics, grads) the next `train_step` would use, without updating: grads
        sharded like the params (for checks and debugging)."""
        return self._gradients(state, self._global(local_batch))

    def _global(self, local_batch: dict) -> dict:
        keys = MODEL_KEYS + (("video",) if "video" in local_batch else pipeline.CROP_KEYS)
        missing = [k for k in keys if k not in local_batch]
        if missing:
            raise ValueError(f"train batch: missing keys {missing}; a batch holds {MODEL_KEYS} "
                             f"and either 'video' or {pipeline.CROP_KEYS}")
        return sharding_lib.global_batch({k: local_batch[k] for k in keys}, self.mesh)


def _state_specs(abstract_opt, param_specs):
    """PartitionSpecs of the optimiser state: a leaf whose key path ends with a parameter's
    path (Adam's mu / nu, ...) is sharded like that parameter; anything else is replicated."""
    by_path = {sharding_lib.path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(
        param_specs, is_leaf=lambda x: isinstance(x, P))[0]}

    def spec(path, leaf):
        for i in range(len(path)):
            found = by_path.get(sharding_lib.path_str(path[i:]))
            if found is not None and len(found) <= leaf.ndim:
                return found
        return P()

    return jax.tree_util.tree_map_with_path(spec, abstract_opt)


# ---------------------------------------------------------------------------------------------
# Logging.


class MetricWriter:
    """JSON lines and TensorBoard event files (tensorboardX: no TensorFlow), process 0 only."""

    def __init__(self, workdir: pathlib.Path, enabled: bool):
        self.enabled = enabled
        self.path = workdir / "train_metrics.jsonl"
        self.tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter
            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        for k, v in scalars.items():
            self.tensorboard.add_scalar(f"{prefix}/{k}", v, step)
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class Preemption:
    """Whether the job was asked to stop (SIGTERM): a flag on one process; on several, jax's
    preemption sync point, so that every process stops after the same step."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        del signum, frame
        self.requested = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _write_json_atomic(path: pathlib.Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# The loop.


def _mesh(config) -> jax.sharding.Mesh:
    return sharding_lib.make_mesh(config.mesh.data, config.mesh.fsdp)


def _train_relevance(config) -> ek100.TrainRelevance:
    clips, sentences = prepare.load_annotations(config.dataset_dir, config.data.train_split)
    return ek100.TrainRelevance.from_tables(clips, sentences,
                                            threshold=config.data.positive_threshold)


def describe(trainer: Trainer) -> str:
    """Startup summary: devices, mesh, parameter count per top-level module, global batch."""
    c = trainer.config
    devices = jax.devices()
    counts = {name: sum(x.size for x in jax.tree.leaves(tree))
              for name, tree in trainer.abstract_state().params.items()}
    lines = [f"devices: {len(devices)} x {devices[0].device_kind} ({devices[0].platform}), "
             f"{jax.process_count()} process(es)",
             f"mesh: {dict(trainer.mesh.shape)}",
             "parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
             + f" (total {sum(counts.values()) / 1e6:.2f}M)",
             f"global batch: {c.global_batch_size} pairs ({c.microbatches} microbatch(es)), "
             f"{c.total_steps} steps, stage {c.stage}, loss {c.loss.name}"]
    return "\n".join(lines)


def _evaluate(trainer: Trainer, state: TrainState, config) -> dict:
    return evaluate_lib.evaluate_split_from_config(trainer.model, trainer.eval_params(state),
                                                   trainer.mesh, config)


def _record_eval(workdir: pathlib.Path, config, step: int, result: dict, started: float) -> dict:
    """Prints the table; writes metrics.json and appends to metrics.jsonl (process 0)."""
    record = {"config": config.name, "step": step,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "elapsed_s": round(time.time() - started, 1), **result["metrics"]}
    if jax.process_index() == 0:
        print(f"\nstep {step}: {config.eval.split} split "
              f"({result['similarity'].shape[0]} clips x {result['similarity'].shape[1]} "
              f"sentences)\n{metrics_lib.format_table(result['metrics'])}", flush=True)
        _write_json_atomic(workdir / "metrics.json", record)
        with open(workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    return record


def _flat_metrics(result_metrics: dict) -> dict:
    """{'mAP': {'avg': x}} -> {'mAP_avg': x} (checkpoint ranking keys)."""
    return {f"{name}_{k}": float(v) for name, d in result_metrics.items() for k, v in d.items()}


def _narration_ids(config, record_indices) -> list[str]:
    source = pipeline.open_split(config.dataset_dir, config.data.train_split)
    return [_text(source[int(i)]["narration_id"]) for i in record_indices]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class _Pending:
    """A dispatched step whose metrics are read one step later (keeps the device busy)."""

    step: int
    metrics: dict
    record_indices: np.ndarray


def train_and_evaluate(config: ml_collections.ConfigDict, workdir,
                       hooks: Sequence[Callable[[int, TrainState], None]] = ()) -> dict:
    """Trains (resuming from ``workdir`` if it holds checkpoints), evaluating as configured.

    Args:
      config: see the module docstring (`default_config()`).
      workdir: output directory (created).
      hooks: called as hook(step, state) after every step (and its save, if any).

    Returns:
      {'step': last step, 'preempted': bool, 'metrics': the last evaluation or None,
       'state': the final TrainState}.
    Raises:
      NonFiniteLossError on a NaN/Inf loss or gradient norm (checkpoints stay as they were).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    trainer = Trainer(config, _mesh(config))
    d = config.data
    train_iter = iter(pipeline.train_pipeline(
        config.dataset_dir, config.global_batch_size, split=d.train_split,
        num_frames=d.num_frames, resolution=d.resolution, crop_scale=tuple(d.crop_scale),
        seed=config.seed, num_workers=d.num_workers, relevance=_train_relevance(config)))
    c = config.checkpoint
    ckpts = checkpoint_lib.RunCheckpoints(workdir, keep=c.keep, keep_best=c.keep_best,
                                          best_metric=c.best_metric, async_save=c.async_save)
    is_main = jax.process_index() == 0
    if is_main:
        print(describe(trainer), flush=True)
    writer = MetricWriter(workdir, enabled=is_main)
    preemption = Preemption()
    progress = None
    try:
        resumed = ckpts.latest_step()
        if resumed is not None:
            state, _ = ckpts.restore(resumed, trainer.abstract_state(), train_iter)
        else:
            state = trainer.init_state()
            if config.init_from.path:
                state = trainer.load_init(state, config.init_from)
        first = int(state.step)
        progress = tqdm.tqdm(total=config.total_steps, initial=first, disable=not is_main,
                             desc=config.name, dynamic_ncols=True)
        result = {"step": first, "preempted": False, "metrics": None}
        pending, tick = None, time.perf_counter()
        for step in range(first, config.total_steps):
            local = next(train_iter)
            state, out = trainer.train_step(state, local)
            if pending is not None:
                tick = _report(pending, config, writer, progress, tick)
            pending = _Pending(step + 1, out, np.asarray(local["index"]))
            done = step + 1
            last = done == config.total_steps
            every = config.eval.every_steps
            evaluate_now = every >= 0 and (last or (every > 0 and done % every == 0))
            stop = preemption.reached(done)
            save_now = last or stop or evaluate_now or done % c.every_steps == 0
            if save_now:
                tick = _report(pending, config, writer, progress, tick)  # never save a NaN
                pending = None
            eval_metrics = None
            if evaluate_now:
                record = _record_eval(workdir, config, done, _evaluate(trainer, state, config),
                                      started)
                result["metrics"] = {k: record[k] for k in ("mAP", "nDCG")}
                eval_metrics = _flat_metrics(result["metrics"])
            if save_now:
                ckpts.save(done, state, train_iter, {"config": config.name, "step": done,
                                                     "preempted": stop}, eval_metrics)
            result["step"] = done
            for hook in hooks:
                hook(done, state)
            if stop:
                result["preempted"] = True
                if is_main:
                    print(f"\npreempted: checkpoint written at step {done}", flush=True)
                break
        if pending is not None:
            _report(pending, config, writer, progress, tick)
        ckpts.wait()
    finally:
        ckpts.wait()
        ckpts.close()
        writer.close()
        preemption.close()
        if progress is not None:
            progress.close()
    result["state"] = state
    return result


def _report(pending: _Pending, config, writer: MetricWriter, progress, tick: float) -> float:
    """Reads a step's metrics (blocking on it), stops on non-finite values, logs, returns the
    new time mark."""
    values = {k: float(v) for k, v in pending.metrics.items()}
    bad = {k: v for k, v in values.items() if k in ("loss", "grad_norm") and not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(pending.step, _narration_ids(config, pending.record_indices), bad)
    now = time.perf_counter()
    values["clips_per_s"] = config.global_batch_size / max(now - tick, 1e-9)
    progress.update(pending.step - progress.n)
    progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                         clips_s=f"{values['clips_per_s']:.1f}", refresh=False)
    if pending.step % config.log_every == 0 or pending.step == config.total_steps:
        writer.write(pending.step, values)
    return now


def evaluate(config: ml_collections.ConfigDict, workdir, step: int | None = None) -> dict:
    """Scores a trained run: the parameters of ``<workdir>/checkpoints`` (latest complete step,
    or ``step``; the EMA copy when the config keeps one) on ``config.eval.split``.

    Prints the table, writes metrics.json / metrics.jsonl; returns the metrics.
    """
    workdir = pathlib.Path(workdir)
    started = time.time()
    trainer = Trainer(config, _mesh(config))
    state = trainer.init_state()
    key = "ema_params" if state.ema_params is not None else "params"
    step_dir = checkpoint_lib.checkpoint_step_dir(workdir, step)
    source = checkpoint_lib.load_flat_params(step_dir, key=key)
    params = checkpoint_lib.merge_params(state.params, source, source_name=str(step_dir))
    state = state.replace(params=params, ema_params=None)
    return _record_eval(workdir, config, int(step_dir.name), _evaluate(trainer, state, config),
                        started)
