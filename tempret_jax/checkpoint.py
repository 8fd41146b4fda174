"""Checkpoints: the training run's (orbax `CheckpointManager`) and parameter loading.

A run's checkpoints live in ``<workdir>/checkpoints/<step>/`` with three items:
  state   the `train.TrainState` pytree (params, optimiser state, step, RNG, EMA), sharded
          arrays written by every process (`ocp.args.StandardSave`);
  data    the Grain iterator state, one JSON file per process (`grain.checkpoint`);
  meta    JSON: config name, step, wall time, eval metrics if any.
Saves are asynchronous (device-to-host copies finish before `save` returns, so the next step
may donate the state's buffers); a step directory appears only when complete, so a killed run
resumes from the last complete one. Kept: the last ``keep`` steps plus the ``keep_best`` best
by the eval metric.

Parameters on their own (`read_params`; `state.load_params` puts them into a model's
shardings): a run's workdir or its checkpoints folder (latest step, or ``step``), one step
folder, or a params-only checkpoint written by `save_params` (what converters write). They are
read as host numpy arrays, independent of the mesh they were written on.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from tempret_jax.sharding import path_str

CHECKPOINTS = "checkpoints"
ITEMS = ("state", "data", "meta")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, or its parameters do not fit the model."""


class RunCheckpoints:
    """The orbax manager of one run, saving and restoring (state, data iterator, meta)."""

    def __init__(self, workdir, *, keep: int = 3, keep_best: int = 1,
                 best_metric: str = "mAP_avg", async_save: bool = True):
        self.directory = pathlib.Path(workdir).absolute() / CHECKPOINTS
        self.best_metric = best_metric
        policies = [checkpoint_managers.LatestN(n=keep)]
        if keep_best > 0:
            policies.append(checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[best_metric], n=keep_best,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=ITEMS,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, meta: Mapping, metrics: Mapping | None = None):
        """Starts writing step ``step`` (returns once the arrays are copied to host).

        metrics: {name: float}; the step competes for "best" only when it has them.
        """
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(dict(meta))), metrics=metrics, force=True)

    def restore(self, step: int, abstract_state, data_iterator):
        """Restores step ``step`` into ``abstract_state``'s shardings and ``data_iterator``.

        Returns (state, meta).
        """
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def wait(self) -> None:
        """Blocks until every started save is complete on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


# ---------------------------------------------------------------------------------------------
# Parameters on their own (init_from, converted checkpoints).


def flatten(params) -> dict[str, np.ndarray]:
    """A params tree -> {'a/b/c': leaf}."""
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def save_params(path, params) -> None:
    """Writes a params-only checkpoint (a nested dict of arrays) readable by `read_params`."""
    path = pathlib.Path(path).absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(path, args=ocp.args.PyTreeSave(jax.tree.map(np.asarray, params)))


@dataclasses.dataclass(frozen=True)
class SavedParams:
    """Parameters as saved: params (a nested dict of numpy arrays), path (the step folder or
    the params-only checkpoint read), step (-1 for a params-only checkpoint), config (the
    config name a run's checkpoint was written under, None if it names none)."""

    params: dict
    path: pathlib.Path
    step: int
    config: str | None


def _read_numpy(path: pathlib.Path):
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def step_dir(path, step: int | None = None) -> pathlib.Path:
    """A run workdir / checkpoints folder -> the step folder (latest complete one by default)."""
    path = pathlib.Path(path).absolute()
    folder = path if _steps(path) and not (path / CHECKPOINTS).is_dir() else path / CHECKPOINTS
    steps = _steps(folder)
    if not steps:
        raise CheckpointError(f"no checkpoint in {folder}: train the run first")
    if step is not None and step >= 0:
        if step not in steps:
            raise CheckpointError(f"{folder} has no checkpoint step {step}; it has {steps}")
        return folder / str(step)
    return folder / str(steps[-1])


def _steps(folder: pathlib.Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def read_params(path, step: int | None = None, key: str = "params") -> SavedParams:
    """The parameters stored at ``path`` (see the module docstring), as host numpy arrays.

    key: which entry of a run's state to read ('params' or 'ema_params').
    """
    path = pathlib.Path(path).absolute()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if (path / "_METADATA").exists() and not (path / "state").is_dir():
        return SavedParams(_read_numpy(path), path, -1, None)  # a params-only checkpoint
    folder = path if (path / "state").is_dir() else step_dir(path, step)
    state = _read_numpy(folder / "state")
    if state.get(key) is None:
        raise CheckpointError(f"{folder / 'state'} has no {key!r} entry")
    meta = folder / "meta" / "metadata"
    name = json.loads(meta.read_text()).get("config") if meta.is_file() else None
    return SavedParams(state[key], folder, int(folder.name), name)
