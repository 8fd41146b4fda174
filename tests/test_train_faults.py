"""What a run survives (issue 21): flipped bytes in a checkpoint, a state that became
non-finite, a second trainer on the workdir, a failing evaluation, a SIGTERM during start-up,
and the "best" checkpoints ranked by evaluations that come after their save."""

import json
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tiny_run import REPO, make_dataset, tiny_config

from tempret_jax import checkpoint, evaluators, lock, train
from tempret_jax import state as state_lib


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def saved_run(dataset, tmp_path_factory):
    """4 steps, checkpoints at 2 and 4: (workdir, final state as numpy)."""
    workdir = tmp_path_factory.mktemp("saved")
    result = train.train_and_evaluate(tiny_config(dataset), workdir)
    return workdir, jax.tree.map(np.asarray, result["state"])


def _copy(saved_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(saved_run[0], workdir)
    return workdir


def _flip_a_byte(step_dir):
    """Flips one bit inside the largest array file of a step (orbax then reads other values)."""
    f = max((step_dir / "state").rglob("ocdbt.process_0/d/*"), key=lambda f: f.stat().st_size)
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x10
    f.write_bytes(bytes(data))


def _steps(workdir) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.is_dir())


def test_a_flipped_byte_in_the_latest_checkpoint_resumes_from_the_one_before(
        dataset, saved_run, tmp_path, capsys):
    workdir = _copy(saved_run, tmp_path)
    _flip_a_byte(workdir / "checkpoints" / "4")
    with pytest.raises(checkpoint.CheckpointError, match="differ from the checksums"):
        state_lib.load_params(None, workdir)

    result = train.train_and_evaluate(tiny_config(dataset), workdir)
    out = capsys.readouterr().out
    assert "checkpoint step 4 is unusable" in out and "resuming from step 2" in out
    assert _steps(workdir) == ["2", "4", "corrupt.4"]  # set aside, not deleted; 4 trained again
    jax.tree.map(np.testing.assert_array_equal, saved_run[1],
                 jax.tree.map(np.asarray, result["state"]))


def test_no_checkpoint_that_restores_is_an_error_that_moves_nothing(dataset, saved_run, tmp_path):
    workdir = _copy(saved_run, tmp_path)
    for step in ("2", "4"):
        _flip_a_byte(workdir / "checkpoints" / step)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in .* restores: step 4"):
        train.train_and_evaluate(tiny_config(dataset), workdir)
    assert _steps(workdir) == ["2", "4"]


def test_a_non_finite_state_stops_before_its_save(dataset, saved_run, tmp_path):
    # The loss of step 5 is computed before the infinite update: only the state shows it.
    workdir = _copy(saved_run, tmp_path)
    config = tiny_config(dataset, total_steps=5)
    config.optim.update(lr=float("inf"), start_lr=float("inf"), end_lr=float("inf"))
    with pytest.raises(train.NonFiniteError) as error:
        train.train_and_evaluate(config, workdir)
    assert error.value.step == 5 and len(error.value.narration_ids) == 8
    assert any(path.startswith("params/") for path in error.value.values["state"])
    assert _steps(workdir) == ["2", "4"]


_HOLDER = """
import sys, time
from tempret_jax import lock
with lock.WorkdirLock(sys.argv[1]):
    print("HELD", flush=True)
    time.sleep(600)
"""


def test_a_second_trainer_is_refused_until_the_first_is_gone(dataset, tmp_path, capsys):
    workdir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(lock.WorkdirBusyError, match=f"in use by another trainer "
                                                        f"\\(pid {holder.pid} on "):
            train.train_and_evaluate(tiny_config(dataset, total_steps=1), workdir)
        assert not (workdir / "checkpoints").exists()
    finally:
        holder.kill()  # like kill -9: the kernel releases the lock, the file stays
        holder.wait()
    assert (workdir / lock.LOCK_FILE).read_text()
    train.train_and_evaluate(tiny_config(dataset, total_steps=1), workdir)
    assert f"taking over from pid {holder.pid}" in capsys.readouterr().out
    assert (workdir / lock.LOCK_FILE).read_text() == ""  # released on exit


def test_the_lock_is_reentrant_within_a_process_and_released_by_the_outermost_exit(tmp_path):
    import os
    with lock.WorkdirLock(tmp_path):
        with lock.WorkdirLock(tmp_path):  # main holds it, the loop takes it again
            assert lock.holder(tmp_path).startswith(f"pid {os.getpid()} on ")
        assert lock.holder(tmp_path) is not None  # the inner exit keeps it
    assert lock.holder(tmp_path) is None


def _failing_at(steps, real=evaluators.run):
    def run(model, params, mesh, config, out=None):
        if run.calls.pop(0) in steps:
            raise RuntimeError("out of memory in the evaluator")
        return real(model, params, mesh, config, out)
    run.calls = []
    return run


def test_a_failed_evaluation_stops_after_the_save_and_is_redone_on_resume(
        dataset, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    config = tiny_config(dataset)
    config.eval.every_steps = 2
    failing = _failing_at({2})
    failing.calls[:] = [2]
    monkeypatch.setattr(evaluators, "run", failing)
    with pytest.raises(train.EvaluationError, match="evaluation at step 2 failed "
                                                    r"\(RuntimeError: out of memory"):
        train.train_and_evaluate(config, workdir)
    assert _steps(workdir) == ["2"]  # the steps trained are saved

    monkeypatch.undo()
    result = train.train_and_evaluate(tiny_config(dataset, eval=config.eval), workdir)
    assert "step 2 was saved but not evaluated" in capsys.readouterr().out
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and result["metrics"]["step"] == 4


def test_a_failed_evaluation_is_reported_and_skipped_with_on_error_continue(
        dataset, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    config = tiny_config(dataset)
    config.eval.update(every_steps=2, on_error="continue")
    failing = _failing_at({2})
    failing.calls[:] = [2, 4]
    monkeypatch.setattr(evaluators, "run", failing)
    result = train.train_and_evaluate(config, workdir)
    assert "warning: evaluation at step 2 failed" in capsys.readouterr().out
    assert result["step"] == 4 and result["metrics"]["step"] == 4
    assert _steps(workdir) == ["2", "4"]


def test_a_sigterm_during_start_up_stops_before_the_first_step(dataset, saved_run, tmp_path,
                                                               monkeypatch):
    import os
    import signal
    workdir = _copy(saved_run, tmp_path)
    real = train._train_iterator

    def terminated_while_starting(config):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        return real(config)
    monkeypatch.setattr(train, "_train_iterator", terminated_while_starting)
    result = train.train_and_evaluate(tiny_config(dataset, total_steps=8), workdir)
    assert result["preempted"] and result["step"] == 4
    assert _steps(workdir) == ["2", "4"]


def test_best_checkpoints_are_ranked_by_evaluations_made_after_their_save(
        dataset, tmp_path, monkeypatch):
    scores = {1: 5.0, 2: 9.0, 3: 3.0, 4: 1.0}

    def scored(model, params, mesh, config, out=None):
        step = len(scored.seen) + 1
        scored.seen.append(step)
        return evaluators.Result({"mAP": {"avg": scores[step]}}, {"mAP_avg": scores[step]}, "")
    scored.seen = []
    monkeypatch.setattr(evaluators, "run", scored)
    config = tiny_config(dataset)
    config.eval.every_steps = 1
    config.checkpoint.update(every_steps=1, keep=1, keep_best=1)
    train.train_and_evaluate(config, tmp_path / "run")
    assert _steps(tmp_path / "run") == ["2", "4"]  # the best (9.0) and the latest
    saved = json.loads((tmp_path / "run" / "checkpoints" / checkpoint.SCORES_FILE).read_text())
    assert saved == {str(k): {"mAP_avg": v} for k, v in scores.items()}


def test_records_after_the_resumed_step_are_not_duplicated(dataset, saved_run, tmp_path):
    # Killed while writing checkpoint 4: steps 3 and 4 are logged, the run resumes from 2.
    workdir = _copy(saved_run, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "4")
    logged = (workdir / train.TRAIN_METRICS).read_text().splitlines()
    with open(workdir / train.TRAIN_METRICS, "a") as f:
        f.write(logged[-1][:20])  # and a line torn by the kill
    result = train.train_and_evaluate(tiny_config(dataset), workdir)
    lines = (workdir / train.TRAIN_METRICS).read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    assert lines[:2] == logged[:2]
    jax.tree.map(np.testing.assert_array_equal, saved_run[1],
                 jax.tree.map(np.asarray, result["state"]))


def test_leftovers_of_a_killed_run_are_removed_on_the_next_start(dataset, saved_run, tmp_path,
                                                                 capsys):
    workdir = _copy(saved_run, tmp_path)
    unfinished = workdir / "checkpoints" / f"6{checkpoint.ORBAX_TEMPORARY}-1733000000"
    (unfinished / "state").mkdir(parents=True)
    temporaries = [workdir / ".metrics.json.k2j4h5g6.tmp",
                   workdir / "checkpoints" / ".scores.json.a1b2c3d4.tmp"]
    for t in temporaries:
        t.write_text("{")
    train.train_and_evaluate(tiny_config(dataset), workdir)  # already at step 4: trains nothing
    assert "removed 3 leftover(s) of an interrupted run" in capsys.readouterr().out
    assert not unfinished.exists() and not any(t.exists() for t in temporaries)
    assert _steps(workdir) == ["2", "4"]


def test_a_data_set_made_from_other_annotations_than_the_configs_is_refused(dataset, tmp_path):
    from tempret_jax import main
    from tempret_jax.data import ek100, verify
    other = tmp_path / "annotations"
    shutil.copytree(pathlib.Path(dataset) / "annotations", other)
    clips = other / ek100.TRAIN_CLIPS_FILE
    clips.write_bytes(clips.read_bytes() + b"\r\n")  # the same rows, other bytes
    config = tiny_config(dataset)
    config.annotation_dir = str(other)
    with pytest.raises(verify.DatasetError, match=f"{clips}"):
        main.run(config, tmp_path / "run", "train")
    assert not (tmp_path / "run" / "checkpoints").exists()
