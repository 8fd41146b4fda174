"""The training loop: input, step, checkpoints, evaluation hooks, logging.

    python -m tempret_jax.main --config configs/X.py --workdir DIR   (main calls
    `train_and_evaluate(config, workdir)`)

The parts it wires together: the state and its shardings (`state.TrainSetup`), the jitted step
(`step.TrainStep`), the Grain train pipeline (`data.pipeline.train_pipeline`), the run's orbax
checkpoints with the pipeline's iterator saved beside the state (`checkpoint.RunCheckpoints`),
and the evaluators of ``config.evals`` (`evaluators.run`). Config keys: `tempret_jax.config`.

Outputs in the workdir: checkpoints/, train_metrics.jsonl (loss, lr, grad norm, clips/s),
metrics.jsonl (one line per evaluation), metrics.json (the latest evaluation), tensorboard/.
A run resumes from its latest checkpoint; a new one starts from a fresh state with
``init_from`` loaded over it. A non-finite loss or gradient stops the run with
`NonFiniteLossError` (step, narration_ids) before anything is saved; SIGTERM saves a
checkpoint and returns (``preempted``) so the process exits 0 and a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import datetime
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

from tempret_jax import atomic, evaluators
from tempret_jax import checkpoint as checkpoint_lib
from tempret_jax.data import ek100, pipeline, prepare
from tempret_jax.state import TrainSetup, TrainState
from tempret_jax.step import TrainStep


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm of a step was NaN/Inf; nothing after the last good
    checkpoint was saved."""

    def __init__(self, step: int, narration_ids: Sequence[str], values: dict):
        self.step, self.narration_ids, self.values = step, list(narration_ids), values
        super().__init__(f"non-finite training values {values} at step {step}; this process's "
                         f"batch held narration_ids {self.narration_ids}")


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
        atomic.append_jsonl(self.path, {"step": step, **scalars})
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
             f"global batch: {c.global_batch_size} pairs ({c.microbatches} microbatch(es)), "
             f"{c.total_steps} steps, stage {c.stage}, loss {c.loss.name}"]
    return "\n".join(lines)


def _train_iterator(config):
    d = config.data
    clips, sentences = prepare.load_annotations(config.dataset_dir, d.train_split)
    relevance = ek100.TrainRelevance.from_tables(clips, sentences,
                                                 threshold=d.positive_threshold)
    return iter(pipeline.train_pipeline(
        config.dataset_dir, config.global_batch_size, split=d.train_split,
        num_frames=d.num_frames, resolution=d.resolution, crop_scale=tuple(d.crop_scale),
        seed=config.seed, num_workers=d.num_workers, relevance=relevance))


def _record_eval(workdir: pathlib.Path, config, step: int, result: evaluators.Result,
                 started: float) -> dict:
    """Prints the table; writes metrics.json and appends to metrics.jsonl (process 0)."""
    record = {"config": config.name, "step": step,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "elapsed_s": round(time.time() - started, 1), **result.record}
    if jax.process_index() == 0:
        print(f"\nstep {step}: {result.table}", flush=True)
        atomic.write_json(workdir / "metrics.json", record)
        atomic.append_jsonl(workdir / "metrics.jsonl", record)
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
      workdir: output directory (created).
      hooks: called as hook(step, state) after every step (and its save, if any).

    Returns:
      {'step': last step, 'preempted': bool, 'metrics': the last evaluation's record or None,
       'state': the final TrainState}.
    Raises:
      NonFiniteLossError on a NaN/Inf loss or gradient norm (checkpoints stay as they were).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    setup = TrainSetup(config)
    train_step = TrainStep(setup)
    train_iter = _train_iterator(config)
    c = config.checkpoint
    ckpts = checkpoint_lib.RunCheckpoints(workdir, keep=c.keep, keep_best=c.keep_best,
                                          best_metric=c.best_metric, async_save=c.async_save)
    is_main = jax.process_index() == 0
    if is_main:
        print(describe(setup), flush=True)
    writer = MetricWriter(workdir, enabled=is_main)
    preemption = Preemption()
    progress = None
    try:
        resumed = ckpts.latest_step()
        if resumed is not None:
            state, _ = ckpts.restore(resumed, setup.abstract_state(), train_iter)
        else:
            state = setup.init_state()
            if config.init_from.path:
                state = setup.with_init_from(state)
        first = int(state.step)
        progress = tqdm.tqdm(total=config.total_steps, initial=first, disable=not is_main,
                             desc=config.name, dynamic_ncols=True)
        result = {"step": first, "preempted": False, "metrics": None}
        pending, tick = None, time.perf_counter()
        for step in range(first, config.total_steps):
            local = next(train_iter)
            state, out = train_step(state, local)
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
            eval_scalars = None
            if evaluate_now:
                evaluation = evaluators.run(setup.model, state.eval_params(), setup.mesh, config)
                result["metrics"] = evaluation.record
                _record_eval(workdir, config, done, evaluation, started)
                eval_scalars = evaluation.scalars
            if save_now:
                ckpts.save(done, state, train_iter, {"config": config.name, "step": done,
                                                     "preempted": stop}, eval_scalars)
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
