"""Checkpoints: the training run's (orbax `CheckpointManager`) and parameter loading.

A run's checkpoints live in ``<workdir>/checkpoints/<step>/`` with three items:
  state   the `train.TrainState` pytree (params, optimiser state, step, RNG, EMA), sharded
          arrays written by every process (`ocp.args.StandardSave`);
  data    the Grain iterator state, one JSON file per process (`grain.checkpoint`);
  meta    JSON: config name, step, whether preempted, and ``checksums``: one per array of
          the state (`tempret_jax.integrity`), checked on every restore and `read_params`.
Saves are asynchronous (device-to-host copies finish before `save` returns, so the next step
may donate the state's buffers); a step directory appears only when complete, so a killed run
resumes from the last complete one, and one that does not restore or check (flipped bytes,
truncated files) is set aside as ``corrupt.<step>`` for the one before it (`restore_latest`).
Kept: the last ``keep`` steps plus the ``keep_best`` best by the evaluator scalar
``best_metric``, recorded after the step's evaluation in ``checkpoints/scores.json``.

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

from tempret_jax import atomic, integrity
from tempret_jax.sharding import path_str

CHECKPOINTS = "checkpoints"
ITEMS = ("state", "data", "meta")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, corrupt, or its parameters do not fit the model."""


ORBAX_TEMPORARY = ".orbax-checkpoint-tmp"  # in the name of a step orbax has not finished
CORRUPT_PREFIX = "corrupt."  # a step folder set aside as checkpoints/corrupt.<step>
SCORES_FILE = "scores.json"  # in checkpoints/: {step: evaluator scalars}, ranks "best"


@dataclasses.dataclass
class _BestScored:
    """Orbax preservation policy: the ``n`` best steps by ``metric`` in ``scores``.

    The scores are the run's own (`RunCheckpoints.record_scores`), not orbax's save-time
    metrics: a step is saved before it is evaluated, and competes once its scores exist.
    """

    scores: dict
    metric: str
    n: int

    def should_preserve(self, checkpoints, *, context=None) -> list[bool]:
        del context
        scored = sorted((self.scores[c.step][self.metric], c.step) for c in checkpoints
                        if c.step in self.scores)
        best = {step for _, step in scored[-self.n:]}
        return [c.step in best for c in checkpoints]


def leftovers(workdir) -> list[pathlib.Path]:
    """What a killed save leaves in a run's checkpoints/: orbax's unfinished step folders and
    our own temporaries (scores.json's)."""
    folder = pathlib.Path(workdir) / CHECKPOINTS
    unfinished = sorted(folder.glob(f"*{ORBAX_TEMPORARY}*")) if folder.is_dir() else []
    return unfinished + atomic.temporaries(folder)


class RunCheckpoints:
    """The orbax manager of one run, saving and restoring (state, data iterator, meta)."""

    def __init__(self, workdir, *, keep: int = 3, keep_best: int = 1,
                 best_metric: str = "mAP_avg", async_save: bool = True):
        self.directory = pathlib.Path(workdir).absolute() / CHECKPOINTS
        scores_file = self.directory / SCORES_FILE
        scores = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
        self.scores = {int(step): values for step, values in scores.items()}
        policies = [checkpoint_managers.LatestN(n=keep)]
        if keep_best > 0:
            policies.append(_BestScored(self.scores, best_metric, keep_best))
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

    def save(self, step: int, state, data_iterator, meta: Mapping, checksums: Mapping[str, int]):
        """Starts writing step ``step`` (returns once the arrays are copied to host).

        checksums: `integrity.fingerprint(state)[0]`, saved in meta for `restore` to check.
        """
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave({**meta, "checksums": checksums})), force=True)

    def record_scores(self, step: int, scalars: Mapping[str, float]) -> None:
        """Ranks step ``step`` for ``keep_best`` by its evaluation (kept in scores.json)."""
        self.scores[step] = dict(scalars)
        if jax.process_index() == 0:
            atomic.write_json(self.directory / SCORES_FILE, {str(k): v for k, v in
                                                             sorted(self.scores.items())})

    def restore(self, step: int, abstract_state, data_iterator):
        """Restores step ``step`` into ``abstract_state``'s shardings and ``data_iterator``,
        checking the arrays against the checksums saved with them.

        Returns (state, meta). Raises CheckpointError if they differ.
        """
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            meta=ocp.args.JsonRestore()))
        state, meta = out["state"], out["meta"]
        bad = integrity.mismatches(state, meta["checksums"]) if "checksums" in meta else []
        if bad:
            raise CheckpointError(f"{self.directory / str(step)}: arrays differ from the "
                                  f"checksums saved with them: {_named(bad)}")
        return state, meta

    def restore_latest(self, abstract_state, data_iterator, say=print):
        """Restores the newest step that restores and checks; None if there is no step.

        A newer step that fails (corrupt files, checksum mismatch) is set aside as
        ``checkpoints/corrupt.<step>`` once an older one restored (nothing is deleted), and
        said. If none restores (e.g. the model no longer matches), nothing is moved and
        CheckpointError names each step's problem. Returns (state, meta).
        """
        failed = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, meta = self.restore(step, abstract_state, data_iterator)
            except Exception as e:  # noqa: BLE001  orbax / tensorstore raise many types
                failed.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
                continue
            for bad, why in failed:
                self._set_aside(bad)
                say(f"checkpoint step {bad} is unusable ({why}); moved to "
                    f"{self.directory / (CORRUPT_PREFIX + str(bad))}; resuming from step {step}")
            if failed:
                self.manager.reload()
            return state, meta
        if failed:
            raise CheckpointError(f"no checkpoint in {self.directory} restores: " + "; ".join(
                f"step {step}: {why}" for step, why in failed))
        return None

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(self.directory / f"{CORRUPT_PREFIX}{step}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"checkpoint set aside {step}")

    def wait(self) -> None:
        """Blocks until every started save is complete on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _named(paths: list[str], n: int = 5) -> str:
    return ", ".join(paths[:n]) + (f" and {len(paths) - n} more" if len(paths) > n else "")


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


def best_step(path, metric: str) -> int:
    """The step of a run (workdir or checkpoints folder) whose evaluation scored highest on
    ``metric`` among the checkpoints still kept (`SCORES_FILE`): how a fine-tune starts from a
    pretraining's best checkpoint (EgoVLP and EVA02-AT pick theirs by EgoMCQ intra accuracy).
    Raises CheckpointError naming the file when no kept checkpoint has that score."""
    folder = step_dir(path).parent
    scores_file = folder / SCORES_FILE
    try:
        scores = json.loads(scores_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{scores_file}: no evaluation scores to choose a step by "
                              f"({e})") from None
    kept = set(_steps(folder))
    scored = [(float(v[metric]), int(step)) for step, v in scores.items()
              if int(step) in kept and metric in v]
    if not scored:
        raise CheckpointError(f"{scores_file}: no kept checkpoint ({sorted(kept)}) has a "
                              f"{metric!r} score")
    return max(scored)[1]


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
    meta_file = folder / "meta" / "metadata"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    checksums = meta.get("checksums")
    bad = integrity.mismatches(state[key], checksums, key + "/") if checksums else []
    if bad:
        raise CheckpointError(f"{folder}: {key} differ from the checksums saved with them: "
                              f"{_named(bad)}")
    return SavedParams(state[key], folder, int(folder.name), meta.get("config"))
