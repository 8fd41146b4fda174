"""The training loop: input, step, checkpoints, evaluation hooks, logging.

    python -m tempret_jax.main --config configs/X.py --workdir DIR   (main calls
    `train_and_evaluate(config, workdir)`)

The parts it wires together: the state and its shardings (`state.TrainSetup`), the jitted step
(`step.TrainStep`), the Grain train stream of the data set's corpus (`data.train_streams`,
checked at start-up to give what the step reads: `check_stream`), the run's orbax
checkpoints with the pipeline's iterator saved beside the state (`checkpoint.RunCheckpoints`),
and the evaluators of ``config.evals`` (`evaluators.run`). Config keys: `tempret_jax.config`.

Outputs in the workdir: checkpoints/, train_metrics.jsonl (loss, lr, grad norm, clips/s),
metrics.jsonl (one line per evaluation), metrics.json (the latest evaluation), tensorboard/
(train/loss, lr, grad_norm, clips_per_s; eval/<each evaluator scalar>, e.g. eval/mAP_v2t).
A run resumes from its latest checkpoint that restores and matches its checksums (a corrupt
newer one is set aside, said); a new one starts from a fresh state with ``init_from`` loaded
over it. Records logged after the resumed step are dropped, since those steps run again. What
keeps a run whole (docs/design.md, "State, step and loop"):
- one trainer per workdir (`lock.WorkdirLock`);
- a non-finite loss, gradient norm or state array stops the run with `NonFiniteError`
  (step, narration_ids) before anything is saved;
- an evaluation step is saved first, then evaluated; a failing evaluation stops the run
  (`EvaluationError`) or is reported and skipped, by ``eval.on_error``, and a resumed run
  evaluates a saved step whose evaluation is missing;
- SIGTERM (handled from the first line, start-up included) saves a checkpoint and returns
  (``preempted``) so the process exits 0 and a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import io
import json
import math
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
import tqdm

from tempret_jax import atomic, evaluators, integrity, lock
from tempret_jax import checkpoint as checkpoint_lib
from tempret_jax import step as step_lib
from tempret_jax.config import ConfigError
from tempret_jax.data import corpora, pipeline, train_streams
from tempret_jax.data.text_tokens import TextTokenizer
from tempret_jax.state import TrainSetup, TrainState


TRAIN_METRICS = "train_metrics.jsonl"  # in the workdir: one line per logged step
EVAL_METRICS = "metrics.jsonl"  # in the workdir: one line per evaluation


class NonFiniteError(FloatingPointError):
    """A step's loss or gradient norm, or the state it left, was NaN/Inf; nothing after the
    last good checkpoint was saved."""

    def __init__(self, step: int, narration_ids: Sequence[str], values: dict):
        self.step, self.narration_ids, self.values = step, list(narration_ids), values
        super().__init__(f"non-finite training values {values} at step {step}; this process's "
                         f"batch held narration_ids {self.narration_ids}")


class EvaluationError(RuntimeError):
    """An evaluation failed with ``eval.on_error='stop'``; the step it scored is saved."""


class MetricWriter:
    """JSON lines and TensorBoard event files (tensorboardX: no TensorFlow), process 0 only."""

    def __init__(self, workdir: pathlib.Path, enabled: bool, resumed_at: int | None = None):
        """resumed_at: the step a run resumes from; the records after it, written before the
        run was stopped, are dropped (the steps are trained again and logged anew)."""
        self.enabled = enabled
        self.path = workdir / TRAIN_METRICS
        self.tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter
            _drop_records_after(self.path, resumed_at or 0)
            _drop_records_after(workdir / EVAL_METRICS, resumed_at or 0)
            # purge_step makes TensorBoard hide the old event files' records from that step on.
            self.tensorboard = SummaryWriter(
                str(workdir / "tensorboard"),
                purge_step=None if resumed_at is None else resumed_at + 1)

    def write(self, step: int, scalars: dict) -> None:
        """A training record: train_metrics.jsonl and TensorBoard's train/<name>."""
        if not self.enabled:
            return
        atomic.append_jsonl(self.path, {"step": step, **scalars})
        self.add_scalars(step, scalars, "train")

    def add_scalars(self, step: int, scalars: dict, prefix: str) -> None:
        """TensorBoard only: <prefix>/<name> at ``step`` (evaluations: eval/mAP_v2t, ...)."""
        if not self.enabled:
            return
        for k, v in scalars.items():
            self.tensorboard.add_scalar(f"{prefix}/{k}", v, step)
        self.tensorboard.flush()

    def add_images(self, step: int, images: dict[str, bytes], prefix: str) -> None:
        """TensorBoard only: each PNG (an evaluator's figure) as the image <prefix>/<name>."""
        if not self.enabled:
            return
        from PIL import Image

        for k, png in images.items():
            with Image.open(io.BytesIO(png)) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.tensorboard.add_image(f"{prefix}/{k}", pixels, step, dataformats="HWC")
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _drop_records_after(path: pathlib.Path, step: int) -> None:
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [x for x in lines if _step_of(x) is not None and _step_of(x) <= step]
    if len(kept) != len(lines):
        atomic.write_text(path, "".join(kept))


def _step_of(line: str) -> int | None:
    """The step of a JSON-lines record; None for a blank or torn line (a kill mid-write)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


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


def pairs_per_step(config) -> int:
    """The pairs a step trains on: the global batch's samples, and with
    data.adjacent_negatives_seconds their adjacent clips too."""
    return config.global_batch_size * (2 if config.data.get("adjacent_negatives_seconds") else 1)


def describe(setup: TrainSetup) -> str:
    """Startup summary: devices, mesh, parameter count per top-level module, global batch."""
    c = setup.config
    devices = jax.devices()
    counts = {name: sum(x.size for x in jax.tree.leaves(tree))
              for name, tree in setup.abstract_state().params.items()}
    lines = [f"devices: {len(devices)} x {devices[0].device_kind} ({devices[0].platform}), "
             f"{jax.process_count()} process(es)",
             f"mesh: {dict(setup.mesh.shape)}",
             "parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
             + f" (total {sum(counts.values()) / 1e6:.2f}M)",
             f"global batch: {c.global_batch_size} samples, {pairs_per_step(c)} pairs "
             f"({c.microbatches} microbatch(es)), "
             f"{c.total_steps} steps, stage {c.stage}, loss {c.loss.name}"]
    return "\n".join(lines)


def check_stream(config) -> None:
    """Raises ConfigError, in one line naming the keys, unless the train stream of the data
    set's corpus (`train_streams.STREAM_KEYS`) gives what the step of ``config`` reads
    (`step.batch_keys`: e.g. egonce needs ego4d, sms ek100_mir, sms_hard charades_ego)."""
    corpus = corpora.of_dataset(config.dataset_dir).name
    needs, gives = step_lib.batch_keys(config), train_streams.STREAM_KEYS[corpus]
    missing = [k for k in needs if k not in gives]
    if missing:
        raise ConfigError(f"config: loss.name {config.loss.name!r} (stage {config.stage}) needs "
                          f"batch keys {list(needs)}; the {corpus} train stream of "
                          f"{config.dataset_dir} gives {list(gives)}, missing {missing}")
    adjacent = config.data.get("adjacent_negatives_seconds", 0.0)
    if adjacent and corpus != corpora.EGO4D.name:
        raise ConfigError(f"config: data.adjacent_negatives_seconds: expected 0 for a {corpus} "
                          f"data set (adjacent clips are EgoClip's, ego4d), got {adjacent}")


def _train_iterator(config):
    d = config.data
    return iter(train_streams.corpus_train_pipeline(
        config.dataset_dir, config.global_batch_size, split=d.train_split,
        num_frames=d.num_frames, resolution=d.resolution, crop_scale=tuple(d.crop_scale),
        seed=config.seed, num_workers=d.num_workers,
        exclude=pipeline.holdout(config.dataset_dir, d),
        tokenize=TextTokenizer.of(config.model.text), positive_threshold=d.positive_threshold,
        adjacent_seconds=d.get("adjacent_negatives_seconds", 0.0)))


def _record_eval(workdir: pathlib.Path, config, step: int, result: evaluators.Result,
                 started: float) -> dict:
    """Prints the table; writes metrics.json and appends to metrics.jsonl (process 0)."""
    record = {"config": config.name, "step": step,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "elapsed_s": round(time.time() - started, 1), **result.record}
    if jax.process_index() == 0:
        print(f"\nstep {step}: {result.table}", flush=True)
        atomic.write_json(workdir / "metrics.json", record)
        atomic.append_jsonl(workdir / EVAL_METRICS, record)
    return record


def _narration_ids(config, record_indices) -> list[str]:
    source = pipeline.open_split(config.dataset_dir, config.data.train_split)
    ids = [source[int(i)]["narration_id"] for i in record_indices]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ids]


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
      config: see `tempret_jax.config`.
      workdir: output directory (created), held with `lock.WorkdirLock` while training.
      hooks: called as hook(step, state) after every step (and its save, if any).

    Returns:
      {'step': last step, 'preempted': bool, 'metrics': the last evaluation's record or None,
       'state': the final TrainState}.
    Raises:
      NonFiniteError on a NaN/Inf loss, gradient norm or state (checkpoints stay as they were);
      EvaluationError on a failed evaluation with ``eval.on_error='stop'`` (its step saved);
      lock.WorkdirBusyError if another trainer holds the workdir.
    """
    workdir = pathlib.Path(workdir)
    preemption = Preemption()  # first: a SIGTERM during start-up is not lost
    try:
        with lock.WorkdirLock(workdir):
            return _train(config, workdir, hooks, preemption)
    finally:
        preemption.close()


def _remove_leftovers(workdir: pathlib.Path, say) -> None:
    """Removes the temporaries a killed run left (the workdir lock says no one writes them)."""
    found = checkpoint_lib.leftovers(workdir) + atomic.temporaries(workdir)
    atomic.remove(found)
    if found:
        say(f"removed {len(found)} leftover(s) of an interrupted run: "
            f"{', '.join(str(p.relative_to(workdir)) for p in found)}")


def _evaluates_at(config, step: int) -> bool:
    every = config.eval.every_steps
    return every >= 0 and (step == config.total_steps or (every > 0 and step % every == 0))


def _train(config, workdir: pathlib.Path, hooks, preemption: Preemption) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    is_main = jax.process_index() == 0
    say = functools.partial(print, flush=True) if is_main else lambda *_: None
    if is_main:
        _remove_leftovers(workdir, say)
    check_stream(config)
    setup = TrainSetup(config)
    train_step = step_lib.TrainStep(setup)
    train_iter = _train_iterator(config)
    c = config.checkpoint
    ckpts = checkpoint_lib.RunCheckpoints(workdir, keep=c.keep, keep_best=c.keep_best,
                                          best_metric=c.best_metric, async_save=c.async_save)
    say(describe(setup))
    writer = progress = None
    try:
        restored = ckpts.restore_latest(setup.abstract_state(), train_iter, say=say)
        if restored is not None:
            state = restored[0]
        else:
            state = setup.init_state()
            if config.init_from.path:
                state = setup.with_init_from(state)
        first = int(state.step)
        writer = MetricWriter(workdir, enabled=is_main,
                              resumed_at=None if restored is None else first)
        result = {"step": first, "preempted": False, "metrics": None}
        evaluate = functools.partial(_evaluate, setup, config, workdir, ckpts, writer, started)
        if restored is not None and _evaluates_at(config, first) and first not in ckpts.scores:
            say(f"step {first} was saved but not evaluated (stopped or failed): evaluating it now")
            result["metrics"] = evaluate(first, state)
        progress = tqdm.tqdm(total=config.total_steps, initial=first, disable=not is_main,
                             desc=config.name, dynamic_ncols=True)
        pending, tick = None, time.perf_counter()
        # A SIGTERM during start-up: stop before training (the state is the saved one).
        result["preempted"] = preemption.requested
        end = first if preemption.requested else config.total_steps
        for step in range(first, end):
            local = next(train_iter)
            state, out = train_step(state, local)
            if pending is not None:
                tick = _report(pending, config, writer, progress, tick)
            pending = _Pending(step + 1, out, np.asarray(local["index"]))
            done = step + 1
            evaluate_now = _evaluates_at(config, done)
            stop = preemption.reached(done)
            if done == config.total_steps or stop or evaluate_now or done % c.every_steps == 0:
                tick = _report(pending, config, writer, progress, tick)  # never save a NaN
                _save(ckpts, state, train_iter, config, pending, stop)
                pending = None
            if evaluate_now:  # after the save: a failing evaluation loses no training
                result["metrics"] = evaluate(done, state) or result["metrics"]
            result["step"] = done
            for hook in hooks:
                hook(done, state)
            if stop:
                result["preempted"] = True
                say(f"\npreempted: checkpoint written at step {done}")
                break
        if pending is not None:
            _report(pending, config, writer, progress, tick)
        ckpts.wait()
    finally:
        ckpts.wait()
        ckpts.close()
        if writer is not None:
            writer.close()
        if progress is not None:
            progress.close()
    result["state"] = state
    return result


def _save(ckpts, state: TrainState, train_iter, config, pending: _Pending, stop: bool) -> None:
    """Saves ``state`` at ``pending.step`` unless some array of it is not finite."""
    checksums, non_finite = integrity.fingerprint(state)
    if non_finite:
        raise NonFiniteError(pending.step, _narration_ids(config, pending.record_indices),
                             {"state": non_finite[:5] + (["..."] if len(non_finite) > 5 else [])})
    ckpts.save(pending.step, state, train_iter,
               {"config": config.name, "step": pending.step, "preempted": stop}, checksums)


def _evaluate(setup, config, workdir, ckpts, writer: MetricWriter, started: float, step: int,
              state) -> dict | None:
    """Runs the evaluators on ``state`` (saved at ``step``) and records the result (metrics
    files, TensorBoard's eval/<scalar>); on an error stops (EvaluationError) or warns and
    returns None, as ``eval.on_error`` says."""
    try:
        evaluation = evaluators.run(setup.model, state.eval_params(), setup.mesh, config)
    except Exception as e:  # noqa: BLE001  any failure of any evaluator
        message = (f"evaluation at step {step} failed ({type(e).__name__}: {e}); the step's "
                   f"checkpoint is saved and a rerun evaluates it")
        if config.eval.on_error == "stop":
            raise EvaluationError(message) from e
        print(f"warning: {message}; training goes on (eval.on_error='continue')", flush=True)
        return None
    ckpts.record_scores(step, evaluation.scalars)
    writer.add_scalars(step, evaluation.scalars, "eval")
    writer.add_images(step, evaluation.images, "eval")
    return _record_eval(workdir, config, step, evaluation, started)


def _report(pending: _Pending, config, writer: MetricWriter, progress, tick: float) -> float:
    """Reads a step's metrics (blocking on it), stops on non-finite values, logs, returns the
    new time mark."""
    values = {k: float(v) for k, v in pending.metrics.items()}
    bad = {k: v for k, v in values.items() if k in ("loss", "grad_norm") and not math.isfinite(v)}
    if bad:
        raise NonFiniteError(pending.step, _narration_ids(config, pending.record_indices), bad)
    now = time.perf_counter()
    values["clips_per_s"] = pairs_per_step(config) / max(now - tick, 1e-9)
    progress.update(pending.step - progress.n)
    progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                         clips_s=f"{values['clips_per_s']:.1f}", refresh=False)
    if pending.step % config.log_every == 0 or pending.step == config.total_steps:
        writer.write(pending.step, values)
    return now
