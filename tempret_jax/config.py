"""The run config: every key with its default, and all of its validation.

A config is `default_config()` updated by a file in configs/ (``get_config(arg)``) and by the
command line (``--config.optim.lr=1e-4``). `validate` checks a config once at each entry
point (training, evaluation, search, tools) and raises `ConfigError` naming the first bad key
and what was expected, or the nearest valid key for a misspelt one. The model block's keys
and presets are documented in `models.retrieval.model_config`; its rules are here too
(`validate_model`): models themselves assume a validated config.

Blocks a config may add besides these keys: ``synthetic`` and ``prepare`` (the demo generates
and prepares SynthKitchens in its workdir: `data.synthetic.SynthConfig`, `data.prepare`), and
``job`` (``'random_baseline'``: score random similarities instead of training), and ``recipe``
(a published setup's paper, row and the source of each value: `recipes.recipe_block`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from tempret_jax import losses, optim, param_layout
from tempret_jax.data import views
from tempret_jax.models import layers, refine, retrieval, temporal, video

# The evaluator modules of tempret_jax/evaluators/ by name (``evals`` lists the ones to run),
# with the scalars each reports (``checkpoint.best_metric`` names one of them).
EVALUATORS = {
    "ek100_mir": tuple(f"{m}_{d}" for m in ("mAP", "nDCG") for d in ("v2t", "t2v", "avg")),
    "egomcq": ("egomcq_inter", "egomcq_intra"),  # accuracy (%) by question type
    "charades_ego": ("charades_ego_mAP",),  # video-to-text mAP (%) over the 157 classes
}
EVAL_ON_ERROR = ("stop", "continue")
# How the test-time views combine (docs/design.md, Test-time augmentation): the mean of their
# unit embeddings (the SMS-Loss code's sum, up to a factor) | the mean of their unnormalised
# features, embedded once.
TTA_REDUCE = ("embeddings_mean", "features_mean")
# Dual-softmax at inference (docs/design.md, Metrics): none | EgoVLP's (every clip's own
# narration, raw dot products) | over the cosines of the split's sentences. A run saved when
# the key was a boolean reads as its alias: False 'none', True 'sentences'.
DUAL_SOFTMAX = ("none", "egovlp", "sentences")
DUAL_SOFTMAX_ALIASES = {False: "none", True: "sentences"}
# Where the evaluator computes the metrics (docs/design.md, Metrics): 'auto' is the jitted,
# row-sharded program (`sharded_metrics`) when the mesh's devices are accelerators and NumPy
# on the host (`metrics`) when they are CPUs, whose XLA sort is about 100x slower than NumPy's.
METRICS_BACKENDS = ("auto", "host", "device")
LOOSE_TYPES = ("eval.dual_softmax",)  # a name, or a saved run's boolean: checked by value
EXTRA_BLOCKS = ("synthetic", "prepare", "job", "annotation_dir", "recipe")
CONFIG_FILE = "config.json"  # a run's resolved config, saved beside its outputs
# Keys that may be 'auto': resolved by compiling for the run's devices (`auto_fit.resolve`)
# before the run starts and saved resolved.
AUTO = "auto"
AUTO_KEYS = ("model.remat", "microbatches", "mesh.fsdp", "mesh.data")


BLOCK = (Mapping, ml_collections.ConfigDict)  # a ConfigDict is not a Mapping


class ConfigError(ValueError):
    """A config key has a value of the wrong type, out of range, or inconsistent with another."""


def set_key(c: ml_collections.ConfigDict, key: str, value) -> None:
    """c.a.b = value for ``key`` 'a.b', whatever type the key held (e.g. 'auto' in an int)."""
    *blocks, name = key.split(".")
    node = c
    for block in blocks:
        node = node[block]
    with c.ignore_type():
        node[name] = value


def set_auto(c: ml_collections.ConfigDict, keys) -> None:
    """Sets each of ``keys`` ('model.remat', ...: of `AUTO_KEYS`) to 'auto', which the keys'
    bool or int type would refuse; `auto_fit.resolve` replaces it before the run starts."""
    for key in keys:
        if key not in AUTO_KEYS:
            raise ConfigError(f"{key}: 'auto' is for {', '.join(AUTO_KEYS)} only")
        set_key(c, key, AUTO)


def default_config() -> ml_collections.ConfigDict:
    """Every key with its default (a tiny model; configs/ set the real sizes)."""
    c = ml_collections.ConfigDict()
    c.name = "train"  # experiment name, written to metrics.json and checked on evaluation
    c.seed = 0  # parameter init, data order, hard-negative draws
    c.stage = 1  # 1: dual encoder on a retrieval loss; 2: ITM cross-encoder on hard negatives
    c.dataset_dir = ""  # a prepared data set (tools/prepare_ek100.py output)
    c.total_steps = 100  # optimiser steps
    c.epochs = 0.0  # > 0: total_steps (and *_epochs keys) from the prepared training split
    # Samples per step over all processes (EgoVLP's batch size); the step sees as many pairs,
    # twice as many with data.adjacent_negatives_seconds (each sample and its adjacent clip).
    c.global_batch_size = 8
    c.microbatches = 1  # k > 1: towers run k times, the loss still over the global batch
    c.mesh = ml_collections.ConfigDict(dict(
        data=-1,  # data-parallel axis size (-1: the devices fsdp leaves)
        fsdp=1,  # parameter-sharding axis size
        rules=(),  # ((regex, PartitionSpec tuple), ...): sharding overrides by parameter path
        fsdp_min_size=2 ** 14,  # parameters with fewer elements stay replicated
    ))
    c.model = retrieval.model_config("tiny")  # keys: models/retrieval.py
    c.loss = ml_collections.ConfigDict(dict(
        name="sms",  # sms | mi_mm | adaptive_mi_mm | info_nce | egonce | sms_hard
        hparams={},  # overrides of the hyper-parameters of the loss (margin, tau, eps, ...)
        reversed_negatives=(),  # ((verb_a, verb_b), ...): mirrored verbs; reversed clips are negatives
        reversed_weight=1.0,  # how many ordinary negatives one reversed clip counts as
    ))
    c.itm = ml_collections.ConfigDict(dict(
        freeze_dual_encoder=True,  # stage 2: only the cross-encoder trains
        dual_loss_weight=0.0,  # stage 2: weight of the retrieval loss next to ITM
        temperature=0.07,  # softmax temperature of the hard-negative draw
    ))
    c.optim = optim.optim_config()  # keys: optim.py
    c.data = ml_collections.ConfigDict(dict(
        train_split="train",  # prepared split to train on
        holdout_clips=0,  # clips of train_split kept out of training (rerank tuning), drawn
        holdout_seed=0,  # by this seed: `pipeline.holdout_records`
        positive_threshold=0.1,  # a sampled positive sentence has rel > this
        num_frames=4,  # frames per clip (= model.vision.num_frames)
        resolution=32,  # crop size in pixels (= model.vision.image_size)
        crop_scale=(0.5, 1.0),  # area range of the random resized crop
        num_workers=0,  # Grain worker processes (0: in the main process)
        dtype="float32",  # dtype of the clips the towers get
        # EgoClip (ego4d) only, EgoVLP's scene-aware negatives (neg_param): > 0 pairs each
        # sample with a random clip of its video whose narration_time // this many seconds
        # is the sample's (EgoVLP: 60; 0 = off, its released configs/pt/egoclip.json)
        adjacent_negatives_seconds=0.0,
    ))
    c.evals = ("ek100_mir",)  # evaluators run during training and by --mode eval, by name
    c.eval = ml_collections.ConfigDict(dict(
        every_steps=0,  # evaluate every N steps (0: only at the end; -1: never)
        split="test",  # prepared split to score
        batch_size=16,  # clips or sentences per embedding call, over all processes
        tta=False,  # score tta_views (else the centre crop alone)
        # ContextRefine-CLIP's views (see data.views.parse_view; scale=1.0 equals orig)
        tta_views=("orig", "flip", "scale=0.875", "scale=1.0", "scale=1.125"),
        tta_reduce="embeddings_mean",  # how the views combine: one of TTA_REDUCE
        dual_softmax="none",  # one of DUAL_SOFTMAX
        dual_softmax_temperature=500.0,  # of its softmax over videos (EgoVLP's 500)
        submission_sls=(4, 3, 3),  # the challenge submission's supervision levels
        num_workers=0,  # Grain worker processes for the eval clips
        chunk=1024,  # rows per refinement call
        on_error="stop",  # a failing evaluation during training: stop | continue (warned)
        metrics_backend="auto",  # one of METRICS_BACKENDS
        # The prepared data set each of these evaluators scores ("": dataset_dir), e.g. EgoMCQ
        # (an Ego4D data set) while pretraining on an EgoClip one: `evaluators.dataset`.
        egomcq_dir="",
        charades_ego_dir="",
    ))
    c.eval.rerank = ml_collections.ConfigDict(dict(
        k=0,  # candidates per query rescored by the cross-encoder (0: no rerank)
        alpha=1.0,  # score = s_dual + alpha * P(match) on the top k
        alphas=(),  # if given, alpha is picked among them on the held-out clips
        ks=(),  # if given, k is picked among them on the held-out clips (with alpha)
        curve_ks=(1, 5, 10, 20, 50, 100),  # the K of the mAP-vs-K plot
        batch_size=64,  # queries per cross-encoder call
    ))
    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=1000,  # steps between checkpoints
        every_epochs=0.0,  # > 0 (with epochs): every_steps from epochs (tempret_jax/epochs.py)
        keep=2,  # latest checkpoints kept
        keep_best=1,  # best checkpoints kept by best_metric
        best_metric="mAP_avg",  # an evaluator scalar
        async_save=True,  # write in the background
    ))
    c.init_from = ml_collections.ConfigDict(dict(
        path="",  # a run, checkpoint folder or converted checkpoint loaded before step 0
        step=-1,  # its step (-1: the latest)
        best_metric="",  # a run's evaluator scalar: its kept checkpoint that scored highest
        include=".*",  # regex of the parameters to load
        exclude="",  # regex of the parameters not to load
        # A converted checkpoint's architecture (model.ARCHITECTURE keys): 'check' (it must
        # equal the config's, else an error naming both) | 'checkpoint' (the config takes it,
        # or a run's: its saved config's, when path is a run).
        architecture="check",
    ))
    c.log_every = 10  # steps between train_metrics.jsonl / TensorBoard records
    return c


def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"config: {key}: expected {expected}, got {got!r}")


def validate(c: ml_collections.ConfigDict, num_devices: int, process_count: int = 1, *,
             allow_auto: bool = False) -> None:
    """Raises ConfigError naming the first bad key of a training / evaluation config.

    Args:
      c: the config; num_devices: devices of the mesh; process_count: JAX processes.
      allow_auto: accept 'auto' in `AUTO_KEYS` (before `auto_fit.resolve`; a model is built
        from a resolved config only).
    """
    check_keys(c, default_config(), allow_auto=allow_auto)
    _validate_training(c, num_devices, process_count)
    _validate_evaluation(c, num_devices)
    validate_model(c.model)


def check_keys(c: Mapping, defaults: Mapping, prefix: str = "", *,
               allow_auto: bool = False) -> None:
    """Every key of ``c`` exists in ``defaults`` (the nearest is named for one that does not)
    and holds a value of the default's type (ints pass for floats, lists for tuples), or
    'auto' in `AUTO_KEYS` with ``allow_auto``."""
    for key, value in c.items():
        name = prefix + key
        if key not in defaults:
            if not prefix and key in EXTRA_BLOCKS:
                continue
            near = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean {prefix + near[0]!r}?" if near else ""
            raise ConfigError(f"config: {name}: no such key{hint}")
        default = defaults[key]
        if isinstance(default, BLOCK) and key != "hparams":  # hparams: free per-loss names
            _check(isinstance(value, BLOCK), name, "a block of keys", value)
            check_keys(value, default, name + ".", allow_auto=allow_auto)
        elif name in AUTO_KEYS and value == AUTO:
            _check(allow_auto, name, f"type {type(default).__name__} ('auto' is resolved "
                   f"before a model is built: auto_fit.resolve)", value)
        elif name not in LOOSE_TYPES:
            _check(_same_type(value, default), name, f"type {type(default).__name__}", value)


def _same_type(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def _validate_training(c, num_devices: int, process_count: int) -> None:
    _check(c.stage in (1, 2), "stage", "1 or 2", c.stage)
    _check(c.loss.name in losses.LOSS_NAMES, "loss.name", f"one of {losses.LOSS_NAMES}",
           c.loss.name)
    _validate_loss(c.loss)
    _check(c.total_steps >= 1, "total_steps", ">= 1", c.total_steps)
    microbatches = 1 if c.microbatches == AUTO else c.microbatches  # auto_fit keeps it valid
    _check(microbatches >= 1, "microbatches", ">= 1", c.microbatches)
    unit = microbatches * num_devices
    _check(c.global_batch_size % unit == 0 and c.global_batch_size // microbatches >= 2,
           "global_batch_size", f"a multiple of microbatches x devices = {unit} with at least 2 "
           f"pairs per microbatch", c.global_batch_size)
    _check(c.global_batch_size % process_count == 0, "global_batch_size",
           f"a multiple of the {process_count} processes", c.global_batch_size)
    _check(c.stage == 1 or c.model.cross_encoder.enabled, "model.cross_encoder.enabled",
           "True for stage 2", c.model.cross_encoder.enabled)
    _check(c.data.num_frames == c.model.vision.num_frames, "data.num_frames",
           f"model.vision.num_frames = {c.model.vision.num_frames}", c.data.num_frames)
    _check(c.data.resolution == c.model.vision.image_size, "data.resolution",
           f"model.vision.image_size = {c.model.vision.image_size}", c.data.resolution)
    _check(c.data.holdout_clips >= 0, "data.holdout_clips", ">= 0", c.data.holdout_clips)
    adjacent = c.data.get("adjacent_negatives_seconds", 0.0)  # runs saved before the key
    _check(adjacent >= 0, "data.adjacent_negatives_seconds", ">= 0 (0: off)", adjacent)
    _check(0 <= c.optim.ema_decay < 1, "optim.ema_decay", "in [0, 1)", c.optim.ema_decay)
    for key, value in (("epochs", c.get("epochs", 0)),
                       ("optim.warmup_epochs", c.optim.get("warmup_epochs", 0)),
                       ("checkpoint.every_epochs", c.checkpoint.get("every_epochs", 0))):
        _check(value >= 0, key, ">= 0 (epochs of the prepared training split)", value)
    name = c.optim.get("name", "adamw")  # runs saved before the key existed trained AdamW
    _check(name in optim.OPTIMIZERS, "optim.name", f"one of {optim.OPTIMIZERS}", name)
    for key in ("include", "exclude"):
        _check(_is_regex(c.init_from[key]), f"init_from.{key}", "a regular expression",
               c.init_from[key])
    _check(c.init_from.architecture in ("check", "checkpoint"), "init_from.architecture",
           "'check' or 'checkpoint'", c.init_from.architecture)
    ck = c.checkpoint
    _check(ck.every_steps >= 1, "checkpoint.every_steps", ">= 1", ck.every_steps)
    _check(ck.keep >= 1, "checkpoint.keep", ">= 1 (the latest checkpoint is what a run resumes "
           "from)", ck.keep)
    _check(ck.keep_best >= 0, "checkpoint.keep_best", ">= 0", ck.keep_best)
    scalars = [name for e in c.evals if e in EVALUATORS for name in EVALUATORS[e]]
    _check(ck.keep_best == 0 or not scalars or ck.best_metric in scalars,
           "checkpoint.best_metric", f"a scalar of the evaluators {tuple(c.evals)}: {scalars}",
           ck.best_metric)
    for key in ("lr", "start_lr", "end_lr", "weight_decay"):
        _check(c.optim[key] >= 0, f"optim.{key}", ">= 0", c.optim[key])
    _check(0 <= c.optim.warmup_steps <= c.total_steps, "optim.warmup_steps",
           f"0..total_steps = {c.total_steps}", c.optim.warmup_steps)
    steps = [p[0] if len(p) == 2 else None for p in c.optim.get("lr_steps", ())]
    _check(not steps or (steps[0] == 0 and all(isinstance(s, int) for s in steps)
                         and steps == sorted(set(steps))
                         and all(p[1] >= 0 for p in c.optim.lr_steps)),
           "optim.lr_steps", "(step, lr) pairs from step 0, steps increasing, lr >= 0",
           c.optim.get("lr_steps"))


def _validate_loss(loss) -> None:
    """The ``loss`` block of a config whose loss.name is known."""
    defaults = losses.spec(loss.name).defaults
    _check(set(loss.hparams) <= set(defaults), "loss.hparams",
           f"hyper-parameters of {loss.name!r}: {sorted(defaults)}", dict(loss.hparams))
    _check(loss.hparams.get("temperature", 1.0) > 0, "loss.hparams.temperature", "> 0",
           loss.hparams.get("temperature"))
    pairs = [tuple(p) for p in loss.reversed_negatives]
    verbs = [v for p in pairs for v in p]
    _check(all(len(p) == 2 for p in pairs) and all(isinstance(v, int) and v >= 0 for v in verbs)
           and len(set(verbs)) == len(verbs), "loss.reversed_negatives",
           "pairs (verb_a, verb_b) of distinct verb class ids >= 0, each verb in one pair",
           loss.reversed_negatives)
    _check(not pairs or loss.name in losses.REVERSED_LOSSES, "loss.reversed_negatives",
           f"() with loss.name {loss.name!r} (reversed clips work with "
           f"{losses.REVERSED_LOSSES})", loss.reversed_negatives)
    _check(loss.reversed_weight > 0, "loss.reversed_weight", "> 0", loss.reversed_weight)


def _validate_evaluation(c, num_devices: int) -> None:
    evals = tuple(c.evals)
    _check(all(name in EVALUATORS for name in evals) and len(set(evals)) == len(evals), "evals",
           f"distinct names from {tuple(EVALUATORS)}", c.evals)
    e = c.eval
    _check(e.batch_size >= 1 and e.batch_size % num_devices == 0, "eval.batch_size",
           f"a multiple of the {num_devices} devices", e.batch_size)
    _check(e.on_error in EVAL_ON_ERROR, "eval.on_error", f"one of {EVAL_ON_ERROR}", e.on_error)
    _check(e.tta_reduce in TTA_REDUCE, "eval.tta_reduce", f"one of {TTA_REDUCE}", e.tta_reduce)
    _check(not e.tta or len(e.tta_views) > 0, "eval.tta_views", "at least one view with eval.tta",
           e.tta_views)
    for spec in e.tta_views:
        try:
            views.parse_view(spec)
        except ValueError as error:
            raise ConfigError(f"config: eval.tta_views: {error}") from None
    _check(isinstance(e.dual_softmax, bool) or e.dual_softmax in DUAL_SOFTMAX, "eval.dual_softmax",
           f"one of {DUAL_SOFTMAX} or a boolean", e.dual_softmax)
    temperature = eval_key(e, "dual_softmax_temperature")
    _check(temperature > 0, "eval.dual_softmax_temperature", "> 0", temperature)
    backend = eval_key(e, "metrics_backend")
    _check(backend in METRICS_BACKENDS, "eval.metrics_backend", f"one of {METRICS_BACKENDS}",
           backend)
    _check(len(e.submission_sls) == 3, "eval.submission_sls", "3 supervision levels",
           e.submission_sls)
    _check(e.rerank.k <= 0 or c.model.cross_encoder.enabled, "eval.rerank.k",
           "0 without a cross-encoder (model.cross_encoder.enabled = True, a stage-2 run)",
           e.rerank.k)
    for key in ("alphas", "ks"):
        _check(not len(e.rerank[key]) or c.data.holdout_clips > 0, f"eval.rerank.{key}",
               "() unless data.holdout_clips > 0 (they are tuned on the held-out clips)",
               e.rerank[key])
    _check(all(int(k) >= 1 for k in e.rerank.ks), "eval.rerank.ks", "values >= 1",
           e.rerank.ks)


def eval_key(e: ml_collections.ConfigDict, key: str):
    """``config.eval[key]``, or the default where a run saved its config before the key was."""
    return e[key] if key in e else default_config().eval[key]


def dual_softmax_settings(e: ml_collections.ConfigDict) -> tuple[str, float]:
    """(mode, temperature) of ``config.eval``'s dual-softmax: mode one of DUAL_SOFTMAX, a
    boolean read as its alias (`embedding.Embedded.similarity`)."""
    mode = e.dual_softmax
    mode = DUAL_SOFTMAX_ALIASES[mode] if isinstance(mode, bool) else mode
    return mode, float(eval_key(e, "dual_softmax_temperature"))


def validate_model(m: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first bad key of a model block (``config.model``, or the
    model config of a converted checkpoint: `convert.read_model_config`)."""
    def check(ok, key, expected, got):
        _check(ok, f"model.{key}", expected, got)

    check(m.dtype in retrieval.DTYPES, "dtype", f"one of {retrieval.DTYPES}", m.dtype)
    check(m.attention_impl in retrieval.ATTENTION_IMPLS, "attention_impl",
          f"one of {tuple(retrieval.ATTENTION_IMPLS)}", m.attention_impl)
    check(m.init_temperature > 0, "init_temperature", "> 0", m.init_temperature)
    try:
        layers.remat_policy(m.remat_policy)
    except ValueError as e:
        raise ConfigError(f"config: model.{e}") from None
    check(m.vision.pos_embed in video.POS_EMBED_KINDS, "vision.pos_embed",
          f"one of {video.POS_EMBED_KINDS}", m.vision.pos_embed)
    for tower in ("vision", "text", "cross_encoder"):
        width, heads = m[tower].width, m[tower].heads
        check(width % heads == 0, f"{tower}.heads", f"a divisor of {tower}.width={width}", heads)
    for tower in ("vision", "text"):
        check(m[tower].mlp in layers.MLP_KINDS, f"{tower}.mlp", f"one of {layers.MLP_KINDS}",
              m[tower].mlp)
        check(0 < m[tower].ln_eps < 1, f"{tower}.ln_eps", "a LayerNorm epsilon in (0, 1)",
              m[tower].ln_eps)
    check(m.vision.qkv_bias in layers.QKV_BIAS, "vision.qkv_bias", f"one of {layers.QKV_BIAS}",
          m.vision.qkv_bias)
    check(isinstance(m.vision.rope_grid, int) and m.vision.rope_grid >= 0, "vision.rope_grid",
          "the RoPE pretraining grid in patches (0: the input grid)", m.vision.rope_grid)
    if "rope" in m.vision.pos_embed:
        check((m.vision.width // m.vision.heads) % 4 == 0, "vision.heads",
              "a head dim divisible by 4 for RoPE", m.vision.heads)
    check(m.vision.image_size % m.vision.patch_size == 0, "vision.image_size",
          f"a multiple of patch_size={m.vision.patch_size}", m.vision.image_size)
    check(not m.temporal.enabled or m.vision.frame_mode, "temporal.enabled",
          "vision.frame_mode=True (the temporal transformer runs on per-frame embeddings)",
          m.temporal.enabled)
    check(m.temporal.pool in temporal.POOLS, "temporal.pool", f"one of {temporal.POOLS}",
          m.temporal.pool)
    check(m.embed_dim % m.temporal.heads == 0, "temporal.heads",
          f"a divisor of embed_dim={m.embed_dim}", m.temporal.heads)
    try:
        if m.refine.enabled:  # a disabled block is never read (saved configs may lack keys)
            refine.check_config(m.refine)
    except ValueError as e:
        raise ConfigError(f"config: model.{e}") from None
    check(m.cross_encoder.video_tokens in retrieval.VIDEO_TOKENS, "cross_encoder.video_tokens",
          f"one of {retrieval.VIDEO_TOKENS}", m.cross_encoder.video_tokens)
    _validate_towers(m, check)


def _validate_towers(m: ml_collections.ConfigDict, check) -> None:
    """The tower choices and what each tower can do (EgoVLP's towers: models/space_time.py,
    models/distilbert.py)."""
    v, t = m.vision, m.text
    check(v.tower in retrieval.VISION_TOWERS, "vision.tower",
          f"one of {retrieval.VISION_TOWERS}", v.tower)
    check(t.tower in retrieval.TEXT_TOWERS, "text.tower", f"one of {retrieval.TEXT_TOWERS}",
          t.tower)
    check(v.temporal_fix in param_layout.TEMPORAL_FIXES, "vision.temporal_fix",
          f"one of {param_layout.TEMPORAL_FIXES}", v.temporal_fix)
    if v.tower == "space_time":
        for key, plain in (("frame_mode", False), ("pos_embed", "learned"), ("sub_ln", False)):
            check(v[key] == plain, f"vision.{key}",
                  f"{plain!r} with vision.tower='space_time' (EgoVLP's tower has no such option)",
                  v[key])
        check(v.mlp != "swiglu", "vision.mlp", "'gelu' or 'quick_gelu' with "
              "vision.tower='space_time'", v.mlp)
    if t.tower == "distilbert":
        check(t.mlp != "swiglu" and not t.sub_ln, "text.mlp",
              "'gelu' or 'quick_gelu' without sub_ln with text.tower='distilbert'", t.mlp)
        check(0 < t.context_length <= t.max_positions, "text.context_length",
              f"at most text.max_positions={t.max_positions} (DistilBERT's position table)",
              t.context_length)


def _is_regex(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True

