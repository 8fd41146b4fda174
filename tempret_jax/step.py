"""The jitted train step: towers, the loss over the global batch, gradients, the update.

Two stages (``config.stage``):
  1. the dual encoder on a retrieval loss over the global batch (``loss.name``: sms, mi_mm,
     adaptive_mi_mm, info_nce; `global_loss.make_global_loss`);
  2. the ITM cross-encoder on the positive pairs and in-batch hard negatives
     (`global_loss.make_hard_negative_sampler`, `losses.itm_loss`), usually from a stage-1 run via
     ``init_from``; the dual encoder frozen (``itm.freeze_dual_encoder``) or trained jointly,
     optionally still on its retrieval loss (``itm.dual_loss_weight``).

Global batch and gradient accumulation. The batch is split over every mesh axis (data, fsdp).
With ``microbatches`` = k > 1 the towers run k times on global_batch / k examples, but the
loss is still the loss of the whole global batch (all in-batch negatives, as the papers train
with): the towers' outputs are first computed without gradients, the loss and its gradient
with respect to those outputs are taken over the global batch, then each microbatch's towers
are re-run and back-propagated with their slice of that gradient (GradCache). Gradients equal
those of k = 1 up to float rounding, at the cost of one extra forward pass.

Dropout (the refinement module's, ContextRefine-CLIP) is on in the step only: each embedding
call draws from its own stream of the step's rng (`_embed`); since the loss part runs once over
the global batch, k > 1 draws the same masks as k = 1. Evaluation never passes an rng.

The step is jitted once with explicit shardings: the state in `TrainSetup.shardings` (donated),
the batch split over the batch axes, the metrics replicated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from tempret_jax import global_loss, losses
from tempret_jax import sharding
from tempret_jax.data import crops, pipeline
from tempret_jax.state import TrainSetup, TrainState

# What an EK-100 batch gives the step besides the clips (`aot`'s abstract batch); the step of
# a config reads `batch_keys(config)` of them, or of another corpus's stream.
MODEL_KEYS = ("tokens", "pos_relevance") + losses.LABEL_KEYS
MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) at 100


def reversed_verbs(clip_verb: jax.Array, pairs) -> jax.Array:
    """(n,) the verb each clip shows when played backwards, -1 for verbs without a pair.

    pairs: ((verb_a, verb_b), ...) classes that are each other's time reversal.
    """
    out = jnp.full_like(clip_verb, -1)
    for a, b in pairs:
        out = jnp.where(clip_verb == a, b, jnp.where(clip_verb == b, a, out))
    return out


def batch_keys(config) -> tuple[str, ...]:
    """The per-example keys the step of ``config`` reads besides the clips (either the
    pipeline's crops, `pipeline.CROP_KEYS`, resampled on the device, or "video": ready
    (n, T, R, R, 3) clips): tokens, the inputs of its retrieval loss (`losses.inputs`), the
    clip verbs of time-reversed negatives, and EK-100's labels for stage 2's hard negatives."""
    c = config
    keys = ["tokens"]
    if c.stage == 1 or c.itm.dual_loss_weight > 0:
        keys += [k for k in losses.inputs(c.loss.name) if k not in losses.REPLICATED_INPUTS]
        keys += ["clip_verb"] if c.loss.reversed_negatives else []
    keys += list(losses.LABEL_KEYS) if c.stage == 2 else []
    return tuple(dict.fromkeys(keys))


def _add_trees(a, b):
    return jax.tree.map(jnp.add, a, b)


class TrainStep:
    """The train step of a `TrainSetup`: ``step(state, local_batch) -> (state, metrics)``.

    `gradients` gives what the next step would use, without updating (checks, debugging).
    """

    def __init__(self, setup: TrainSetup):
        c = setup.config
        self.setup, self.config, self.mesh, self.model = setup, c, setup.mesh, setup.model
        self.stage2 = c.stage == 2
        self.use_dual_loss = not self.stage2 or c.itm.dual_loss_weight > 0
        self.reversed_pairs = tuple(tuple(p) for p in c.loss.reversed_negatives)
        self.reversed = bool(self.reversed_pairs) and self.use_dual_loss
        self.loss_inputs = losses.inputs(c.loss.name)
        self.batch_keys = batch_keys(c)
        self.loss_fn = global_loss.make_global_loss(c.loss.name, self.mesh, sharding.BATCH_AXES,
                                                    reversed_negatives=self.reversed,
                                                    reversed_weight=c.loss.reversed_weight,
                                                    **dict(c.loss.hparams))
        self.sampler = global_loss.make_hard_negative_sampler(
            self.mesh, sharding.BATCH_AXES, temperature=c.itm.temperature)
        batch = sharding.batch_sharding(self.mesh)
        self._step = jax.jit(self._train_step, in_shardings=(setup.shardings, batch),
                             out_shardings=(setup.shardings, sharding.replicated(self.mesh)),
                             donate_argnums=0)
        self._gradients = jax.jit(
            lambda state, batch: self._grads(state.params, batch, self._step_rng(state)),
            in_shardings=(setup.shardings, batch),
            out_shardings=(None, None, setup.shardings.params))

    def __call__(self, state: TrainState, local_batch: dict):
        """One step on this process's rows of the global batch (numpy, from the pipeline:
        `batch_keys` and either `pipeline.CROP_KEYS` or "video"; other keys are not sent).

        Returns (new state, metrics {name: replicated scalar}); ``state`` is donated.
        """
        with jax.set_mesh(self.mesh):  # the context of per-shard kernels (models/attention.py)
            return self._step(state, self._global(local_batch))

    def lower(self, state, batch: dict):
        """The step lowered for ahead-of-time compilation (`tempret_jax.aot`): ``state`` and
        ``batch`` as ShapeDtypeStructs of the global arrays (`TrainSetup.abstract_state`)."""
        with jax.set_mesh(self.mesh):
            return self._step.lower(state, batch)

    def gradients(self, state: TrainState, local_batch: dict):
        """(loss, metrics, grads) the next step would use: grads sharded like the params."""
        with jax.set_mesh(self.mesh):
            return self._gradients(state, self._global(local_batch))

    def _global(self, local_batch: dict) -> dict:
        keys = self.batch_keys + (("video",) if "video" in local_batch else pipeline.CROP_KEYS)
        missing = [k for k in keys if k not in local_batch]
        if missing:
            raise ValueError(f"train batch: missing keys {missing}; the step of loss "
                             f"{self.config.loss.name!r} (stage {self.config.stage}) reads "
                             f"{self.batch_keys} and either 'video' or {pipeline.CROP_KEYS}")
        return sharding.global_batch({k: local_batch[k] for k in keys}, self.mesh)

    @staticmethod
    def _step_rng(state: TrainState):
        return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def _train_step(self, state: TrainState, batch: dict):
        loss, out, grads = self._grads(state.params, batch, self._step_rng(state))
        updates, opt_state = self.setup.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            decay = self.config.optim.ema_decay
            ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        trainable_grads = jax.tree.map(lambda g, t: g if t else jnp.zeros((), g.dtype),
                                       grads, self.setup.trainable)
        out = {**out, "loss": loss, "grad_norm": optax.tree.norm(trainable_grads),
               "lr": self.setup.schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             ema_params=ema), out

    # -- the loss -----------------------------------------------------------------------------

    def _video(self, batch):
        """(n, T, R, R, 3) data.dtype clips: the batch's own "video", or its crops resampled."""
        if "video" in batch:
            return batch["video"]
        d = self.config.data
        return crops.resized_crops(batch["frames"], batch["crop_box"], batch["crop_window"],
                                   d.resolution, d.dtype)

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

    def _embed(self, params, rng, stream: int, modality: str, features, gallery):
        """Training embeddings: refinement (if any) with dropout on, its own rng ``stream``."""
        method = {"video": self.model.embed_video, "text": self.model.embed_text}[modality]
        return self.model.apply({"params": params}, features, gallery, None, False,
                                method=method,
                                rngs={"dropout": jax.random.fold_in(rng, stream)})

    def _head_loss(self, params, enc, text_mask, batch, rng):
        """The global-batch part: refinement, embeddings, losses. Returns (loss, metrics)."""
        video = self._embed(params, rng, 1, "video", enc["video"], enc["text"])
        text = self._embed(params, rng, 2, "text", enc["text"], enc["video"])
        scale = jnp.minimum(jnp.exp(params["logit_scale"]), MAX_LOGIT_SCALE)
        out = {"temperature": 1.0 / scale}
        total = 0.0
        if self.use_dual_loss:
            inputs = {k: batch[k] for k in self.loss_inputs if k in batch}
            if "temperature" in self.loss_inputs:
                inputs["temperature"] = 1.0 / scale
            if self.reversed:
                inputs["reversed_video"] = self._embed(params, rng, 3, "video",
                                                       enc["reversed_video"], enc["text"])
                inputs["reversed_verb"] = reversed_verbs(batch["clip_verb"], self.reversed_pairs)
            out["retrieval_loss"] = self.loss_fn(video, text, **inputs)
            weight = self.config.itm.dual_loss_weight if self.stage2 else 1.0
            total = total + weight * out["retrieval_loss"]
        if self.stage2:
            out["itm_loss"], out["itm_accuracy"] = self._itm(params, enc, text_mask, video, text,
                                                             batch, rng)
            total = total + out["itm_loss"]
        return total, out

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
        k, d = self.config.microbatches, sharding.batch_devices(self.mesh)
        per = x.shape[0] // (d * k)
        y = x.reshape((d, k, per) + x.shape[1:]).swapaxes(0, 1).reshape((k, d * per) + x.shape[1:])
        return jax.lax.with_sharding_constraint(
            y, jax.NamedSharding(self.mesh, P(None, sharding.BATCH_AXES)))

    def _merge(self, y):
        """The inverse of `_split`: (k, n / k, ...) -> (n, ...)."""
        k, d = self.config.microbatches, sharding.batch_devices(self.mesh)
        per = y.shape[1] // d
        x = y.reshape((k, d, per) + y.shape[2:]).swapaxes(0, 1).reshape((-1,) + y.shape[2:])
        return jax.lax.with_sharding_constraint(x, sharding.batch_sharding(self.mesh))

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
