"""The train state: what it holds, its shape and shardings, and loading parameters into it.

`TrainSetup(config, mesh)` is the model, optimiser and state shardings of a config: one
abstract state (`jax.eval_shape`, no memory) serves creating the state already sharded
(`init_state`), restoring a checkpoint into its shardings (`abstract_state`) and compiling
ahead of time. Parameters are sharded by their path (`sharding.partition_specs`); an optimiser
state leaf whose path ends with a parameter's path (Adam's mu / nu) is sharded like it.

`load_params` is the one way from anything saved to parameters: a run (its workdir, its
checkpoints/ folder or one step folder; the latest step unless ``step``) or a params-only
checkpoint (`checkpoint.save_params`, what tools/convert_checkpoint.py writes), in the
layout of the model (`param_layout.adapt`: scanned or unrolled layers, the temporal embedding
inflated to the model's frames). The values land in the shardings of the parameters they
replace. Training, evaluation, search and tools
all load through it. Where a run's state comes from, in order (docs/design.md, Checkpoints):
its own latest checkpoint (resume), else a fresh init with ``init_from`` loaded over it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from tempret_jax import checkpoint
from tempret_jax import config as config_lib
from tempret_jax import convert
from tempret_jax import optim
from tempret_jax import param_layout
from tempret_jax import sharding
from tempret_jax.models import attention
from tempret_jax.models import retrieval

DUAL_ENCODER = r"^(?!cross_encoder/)"  # every parameter but the cross-encoder's


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. rng: raw uint32 key data (2,); ema_params: None without EMA."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None

    def eval_params(self):
        """The parameters to evaluate: the EMA when kept, else the live ones."""
        return self.params if self.ema_params is None else self.ema_params


class TrainSetup:
    """The model, optimiser and state shardings of a config on a mesh (default: the config's).

    Attributes: config, mesh, model (`RetrievalModel`), tx and schedule (optax), trainable (a
    params-shaped tree of bools), shardings (a `TrainState` of NamedShardings).
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp) if mesh is None else mesh
        config_lib.validate(config, mesh.size, jax.process_count())
        if convert.is_converted(config.init_from.path):
            convert.check_fits(config.model, config.init_from.path)
        self.config, self.mesh = config, mesh
        self.model = retrieval.RetrievalModel.from_config(
            _on_platform(config.model, mesh.devices.flat[0].platform))
        optim_config = ml_collections.ConfigDict(config.optim.to_dict())
        if config.stage == 2 and config.itm.freeze_dual_encoder:
            optim_config.freeze = "|".join(f"(?:{r})" for r in (optim_config.freeze, DUAL_ENCODER)
                                           if r)
        abstract_params = jax.eval_shape(self._init_params, jax.random.key(0))
        self.tx, self.schedule = optim.make_optimizer(optim_config, abstract_params,
                                                      config.total_steps)
        _, labels = optim.param_groups(optim_config, abstract_params)
        self.trainable = jax.tree.map(lambda label: label != optim.FROZEN, labels)
        param_specs = sharding.partition_specs(
            abstract_params, mesh, [tuple(r) for r in config.mesh.rules],
            config.mesh.fsdp_min_size)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        self.shardings = sharding.named(mesh, TrainState(
            step=P(), params=param_specs, opt_state=_opt_state_specs(abstract_opt, param_specs),
            rng=P(), ema_params=param_specs if config.optim.ema_decay > 0 else None))

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
        """A fresh state, created directly in its shardings (never whole on one device)."""
        return jax.jit(self._init_state, static_argnums=0,
                       out_shardings=self.shardings)(self.config.seed)

    def abstract_state(self) -> TrainState:
        """The state as ShapeDtypeStructs with their shardings (restore, AOT compilation)."""
        shapes = jax.eval_shape(self._init_state, self.config.seed)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.shardings)

    def with_init_from(self, state: TrainState) -> TrainState:
        """``state`` with ``config.init_from`` loaded over its parameters (and the EMA copy)."""
        f = self.config.init_from
        step = f.step if f.step >= 0 else None
        if f.get("best_metric"):  # a run's best checkpoint by one of its evaluation scalars
            step = checkpoint.best_step(f.path, f.best_metric)
        params, _ = load_params(state.params, f.path, step=step,
                                include=f.include, exclude=f.exclude,
                                temporal_fix=self.config.model.vision.temporal_fix)
        return state.replace(params=params,
                             ema_params=None if state.ema_params is None else params)

    def load_eval_params(self, source, step: int | None = None, expect_config: str | None = None
                         ) -> tuple[Any, int]:
        """The parameters to evaluate from ``source`` (a run's EMA copy when the config keeps
        one), in their shardings. Returns (params, step; -1 for a params-only checkpoint)."""
        if convert.is_converted(source):
            convert.check_fits(self.config.model, source)
        abstract = self.abstract_state()
        key = "params" if abstract.ema_params is None else "ema_params"
        return load_params(abstract.params, source, step=step, key=key,
                           expect_config=expect_config,
                           temporal_fix=self.config.model.vision.temporal_fix)


def _on_platform(model: ml_collections.ConfigDict, platform: str) -> ml_collections.ConfigDict:
    """``model`` with attention_impl 'auto' made the kernel of the mesh's devices (the model may
    be compiled for devices this process does not have: `tempret_jax.aot`)."""
    if model.attention_impl != "auto":
        return model
    resolved = ml_collections.ConfigDict(model.to_dict())
    resolved.attention_impl = attention.for_platform(platform)
    return resolved


def _opt_state_specs(abstract_opt, param_specs):
    """PartitionSpecs of the optimiser state: a leaf whose key path ends with a parameter's
    path (Adam's mu / nu, ...) is sharded like that parameter; anything else is replicated."""
    by_path = {sharding.path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(
        param_specs, is_leaf=lambda x: isinstance(x, P))[0]}

    def spec(path, leaf):
        for i in range(len(path)):
            found = by_path.get(sharding.path_str(path[i:]))
            if found is not None and len(found) <= leaf.ndim:
                return found
        return P()

    return jax.tree_util.tree_map_with_path(spec, abstract_opt)


def load_params(target, source, *, step: int | None = None, key: str = "params",
                include: str = ".*", exclude: str = "", expect_config: str | None = None,
                temporal_fix: str = "bilinear") -> tuple[Any, int]:
    """Parameters from anything saved (see the module docstring), merged into ``target``.

    Args:
      target: the model's parameter tree: arrays, or ShapeDtypeStructs with shardings (then
        ``include`` / ``exclude`` must select every parameter); None: the saved tree as it is
        (nested dict of numpy arrays).
      source: a run workdir, checkpoints/ folder, step folder or params-only checkpoint.
      step: the run's step to read (default the latest complete one).
      key: the entry of a run's state to read: 'params' or 'ema_params'.
      include, exclude: regexes (re.search) of the target paths to load; the others keep
        their value.
      expect_config: if given, a run's checkpoint written under another config name is refused.
      temporal_fix: how a temporal embedding of other frames is resized (the model config's
        vision.temporal_fix; param_layout).

    Returns:
      (params: the target's tree with the selected leaves replaced, in the target's shardings;
       step: the step read, -1 for a params-only checkpoint).
    Raises:
      checkpoint.CheckpointError naming the source and every selected key it lacks or whose
      shape differs, before anything is loaded.
    """
    saved = checkpoint.read_params(source, step=step, key=key)
    if expect_config is not None and saved.config not in (None, expect_config):
        raise checkpoint.CheckpointError(
            f"{source} holds a run of config {saved.config!r}, but the config given is "
            f"{expect_config!r}: pass the config it was trained with")
    if target is None:
        return saved.params, saved.step
    target_shapes = {k: tuple(v.shape) for k, v in checkpoint.flatten(target).items()}
    source = param_layout.adapt(checkpoint.flatten(saved.params), target_shapes, temporal_fix)
    return _merge(target, source, include, exclude, str(saved.path)), saved.step


def _merge(target, source: Mapping[str, np.ndarray], include: str, exclude: str,
           source_name: str):
    inc = re.compile(include)
    exc = re.compile(exclude) if exclude else None
    flat = checkpoint.flatten(target)
    selected = [k for k in flat if inc.search(k) and not (exc and exc.search(k))]
    if not selected:
        raise checkpoint.CheckpointError(f"include={include!r} exclude={exclude!r} selects no "
                                         f"parameter of the model")
    missing = [k for k in selected if k not in source]
    mismatched = [f"{k}: model {tuple(flat[k].shape)}, checkpoint {tuple(source[k].shape)}"
                  for k in selected if k in source and tuple(source[k].shape) != tuple(flat[k].shape)]
    if missing or mismatched:
        lines = [f"{source_name} does not fit the model (include={include!r}, "
                 f"exclude={exclude!r})"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
        if mismatched:
            lines.append(f"shape mismatches ({len(mismatched)}): " + "; ".join(mismatched))
        raise checkpoint.CheckpointError("\n".join(lines))
    chosen = set(selected)
    abstract = [k for k in flat if k not in chosen and isinstance(flat[k], jax.ShapeDtypeStruct)]
    if abstract:
        raise checkpoint.CheckpointError(f"include={include!r} exclude={exclude!r} leaves "
                                         f"{len(abstract)} parameters without a value, e.g. "
                                         f"{abstract[0]}")

    def pick(path, leaf):
        name = sharding.path_str(path)
        if name not in chosen:
            return leaf
        value = np.asarray(source[name], dtype=leaf.dtype)
        placement = getattr(leaf, "sharding", None)
        return (value if placement is None else
                jax.make_array_from_callback(value.shape, placement, lambda idx: value[idx]))

    return jax.tree_util.tree_map_with_path(pick, target)
