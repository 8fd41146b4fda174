"""The trainer on a tiny SynthKitchens: losses go down, sharding and accumulation change nothing,
runs resume bitwise after kill -9, SIGTERM checkpoints and exits 0, NaN stops cleanly,
init_from names what does not fit, and 2 processes compute what 1 does."""

import json
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from tempret_jax import checkpoint, evaluate, sharding, train
from tempret_jax import state as state_lib
from tempret_jax import step as step_lib
from tempret_jax.data import crops, ek100, pipeline
from tiny_run import REPO, make_dataset, start_runner, tiny_config

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def fixed_batch(dataset):
    it = iter(pipeline.train_pipeline(dataset, 8, num_frames=4, resolution=32,
                                      process_index=0, process_count=1))
    return next(it)


def _one_device_mesh():
    return sharding.make_mesh(devices=jax.devices()[:1])


def _trainer(config, mesh=None) -> step_lib.TrainStep:
    return step_lib.TrainStep(state_lib.TrainSetup(config, mesh))


def _run_steps(trainer, batch, n):
    train_state = trainer.setup.init_state()
    losses = []
    for _ in range(n):
        train_state, out = trainer(train_state, batch)
        losses.append({k: float(v) for k, v in out.items()})
    return train_state, losses


def _host(tree):
    return jax.tree.map(np.asarray, tree)


# ---------------------------------------------------------------------------------------------
# Learning.


@pytest.mark.parametrize("loss", ["sms", "mi_mm", "adaptive_mi_mm", "info_nce"])
def test_stage1_overfits_a_fixed_batch(dataset, fixed_batch, loss):
    trainer = _trainer(tiny_config(dataset, loss={"name": loss}), _one_device_mesh())
    _, history = _run_steps(trainer, fixed_batch, 8)
    first, last = history[0]["loss"], history[-1]["loss"]
    assert np.isfinite(first) and last < 0.7 * first, [h["loss"] for h in history]


def test_stage2_trains_the_cross_encoder_with_the_dual_encoder_frozen(dataset, fixed_batch):
    config = tiny_config(dataset, stage=2)
    config.model.cross_encoder.enabled = True
    trainer = _trainer(config, _one_device_mesh())
    start = _host(trainer.setup.init_state().params)
    state, history = _run_steps(trainer, fixed_batch, 16)
    itm = [h["itm_loss"] for h in history]  # noisy: new hard negatives every step
    assert np.mean(itm[-3:]) < 0.8 * itm[0], itm
    end = _host(state.params)
    for name in ("visual", "text", "logit_scale"):
        jax.tree.map(np.testing.assert_array_equal, start[name], end[name])
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), start["cross_encoder"],
                           end["cross_encoder"])
    assert all(jax.tree.leaves(changed))


# ---------------------------------------------------------------------------------------------
# Sharding and accumulation.


def test_fsdp_sharding_and_microbatches_give_the_single_device_step(dataset):
    # 16 pairs: 2 microbatches of 8, one pair per device and microbatch on 8 devices.
    batch = next(iter(pipeline.train_pipeline(dataset, 16, num_frames=4, resolution=32,
                                              process_index=0, process_count=1)))
    reference = _trainer(tiny_config(dataset, global_batch_size=16), _one_device_mesh())
    config = tiny_config(dataset, global_batch_size=16, microbatches=2)
    config.mesh.update(data=4, fsdp=2, fsdp_min_size=1024)
    sharded = _trainer(config, sharding.make_mesh(4, 2))

    ref_state, state = reference.setup.init_state(), sharded.setup.init_state()
    kernel = state.params["visual"]["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"]
    assert "fsdp" in kernel.sharding.spec  # really sharded, (32, 128): on the 128
    jax.tree.map(np.testing.assert_array_equal, _host(ref_state.params), _host(state.params))
    ref_loss, _, ref_grads = reference.gradients(ref_state, batch)
    loss, _, grads = sharded.gradients(state, batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    # Gradients, not Adam's updates: Adam turns float noise on ~0 gradients (attention key
    # biases have exactly 0) into full-size steps. Tolerance relative to the largest one.
    ref_grads, grads = _host(ref_grads), _host(grads)
    scale = max(np.abs(g).max() for g in jax.tree.leaves(ref_grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6 * scale),
                 ref_grads, grads)


MIRRORED = ((0, 1), (2, 3), (4, 5), (6, 7))  # SynthKitchens' mirrored verb ids


def test_reversed_negatives_change_the_loss_and_shard_like_one_device(dataset):
    """loss.reversed_negatives: each mirrored-verb clip played backwards is one more negative
    for its sentence; the step on a 4 x 2 mesh with 2 microbatches equals the 1-device step."""
    batch = next(iter(pipeline.train_pipeline(dataset, 16, num_frames=4, resolution=32,
                                              process_index=0, process_count=1)))
    assert np.isin(batch["clip_verb"], np.ravel(MIRRORED)).any()
    plain = _trainer(tiny_config(dataset, global_batch_size=16), _one_device_mesh())
    config = tiny_config(dataset, global_batch_size=16)
    config.loss.reversed_negatives = MIRRORED
    reference = _trainer(config, _one_device_mesh())
    np.testing.assert_array_equal(step_lib.reversed_verbs(np.int32([0, 1, 5, 6, 8]), MIRRORED),
                                  [1, 0, 4, 7, -1])
    state = reference.setup.init_state()
    plain_loss = plain.gradients(state, batch)[0]
    ref_loss, _, ref_grads = reference.gradients(state, batch)
    assert float(ref_loss) > float(plain_loss)  # hinge terms: the reversed clips add to it

    config.microbatches = 2
    config.mesh.update(data=4, fsdp=2, fsdp_min_size=1024)
    sharded = _trainer(config, sharding.make_mesh(4, 2))
    loss, _, grads = sharded.gradients(sharded.setup.init_state(), batch)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    ref_grads, grads = _host(ref_grads), _host(grads)
    scale = max(np.abs(g).max() for g in jax.tree.leaves(ref_grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6 * scale),
                 ref_grads, grads)


@pytest.mark.parametrize("pairs, weight, key", [
    (((0, 1), (1, 2)), 1.0, "reversed_negatives"), (((0,),), 1.0, "reversed_negatives"),
    (((0, -1),), 1.0, "reversed_negatives"), (((0, 1),), 0.0, "reversed_weight")])
def test_bad_reversed_negatives_are_named(dataset, pairs, weight, key):
    config = tiny_config(dataset)
    config.loss.update(reversed_negatives=pairs, reversed_weight=weight)
    with pytest.raises(ValueError, match=f"loss.{key}: expected"):
        _trainer(config, _one_device_mesh())


def test_pipeline_crops_and_ready_clips_give_the_same_step(dataset, fixed_batch):
    """A batch carries the pipeline's crops (resampled in the step) or ready clips ("video")."""
    trainer = _trainer(tiny_config(dataset), _one_device_mesh())
    state = trainer.setup.init_state()
    video = crops.resized_crops(*(fixed_batch[k] for k in pipeline.CROP_KEYS), 32)
    ready = {**{k: v for k, v in fixed_batch.items() if k not in pipeline.CROP_KEYS},
             "video": np.asarray(video)}
    np.testing.assert_allclose(trainer.gradients(state, ready)[0],
                               trainer.gradients(state, fixed_batch)[0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"missing keys \['crop_box'\]"):
        trainer(state, {k: v for k, v in fixed_batch.items() if k != "crop_box"})


# ---------------------------------------------------------------------------------------------
# Runs: resume, preemption, NaN.

@pytest.fixture(scope="module")
def straight_run(dataset, tmp_path_factory):
    """4 steps without interruption (checkpoints at 2 and 4)."""
    workdir = tmp_path_factory.mktemp("straight")
    result = train.train_and_evaluate(tiny_config(dataset), workdir)
    return workdir, result


def test_resume_after_kill_9_is_bitwise_identical(dataset, straight_run, tmp_path):
    workdir, straight = straight_run
    killed = tmp_path / "killed"
    proc = start_runner(tmp_path, tiny_config(dataset), killed, kill_at=3, wait_for="2")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert "STEP 3" in out and "DONE" not in out

    resumed = train.train_and_evaluate(tiny_config(dataset), killed)
    assert resumed["step"] == 4 and not resumed["preempted"]
    jax.tree.map(np.testing.assert_array_equal, _host(straight["state"]),
                 _host(resumed["state"]))
    lines = [json.loads(x) for x in (killed / "train_metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]  # step 3, logged before the kill, once


def test_sigterm_writes_a_checkpoint_and_exits_0(dataset, tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config(dataset, total_steps=10_000)
    config.checkpoint.every_steps = 100_000
    proc = start_runner(tmp_path, config, workdir)
    for line in proc.stdout:
        if line.startswith("STEP 2"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    done = [line.split() for line in out.splitlines() if line.startswith("DONE")]
    assert len(done) == 1 and done[0][2] == "True"
    step = int(done[0][1])
    assert 2 <= step < 10_000
    meta = json.loads((workdir / "checkpoints" / str(step) / "meta" / "metadata").read_text())
    assert meta["preempted"] and meta["step"] == step


def _saved_params(source) -> dict:
    """{'a/b/c': numpy array} of the parameters saved at ``source``."""
    return checkpoint.flatten(state_lib.load_params(None, source)[0])


def test_non_finite_loss_stops_with_the_batch_and_keeps_the_last_checkpoint(
        dataset, straight_run, tmp_path):
    import shutil
    workdir = tmp_path / "run"
    shutil.copytree(straight_run[0], workdir)
    before = _saved_params(workdir)
    config = tiny_config(dataset, total_steps=8)
    config.optim.update(lr=float("inf"), start_lr=float("inf"), end_lr=float("inf"))
    with pytest.raises(train.NonFiniteError) as error:
        train.train_and_evaluate(config, workdir)
    assert 5 <= error.value.step <= 6  # step 5 makes the weights non-finite
    train_ids = set(ek100.read_clips(pathlib.Path(dataset) / "annotations" /
                                     ek100.TRAIN_CLIPS_FILE).narration_id)
    assert len(error.value.narration_ids) == 8 and set(error.value.narration_ids) <= train_ids
    assert str(error.value.step) in str(error.value)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 4
    after = _saved_params(workdir)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_evaluate_scores_the_latest_checkpoint(dataset, straight_run):
    workdir, _ = straight_run
    record = evaluate.run(tiny_config(dataset), workdir)
    assert record["step"] == 4 and record["config"] == "test"
    assert 0 < record["mAP"]["avg"] <= 100 and 0 < record["nDCG"]["avg"] <= 100
    assert json.loads((workdir / evaluate.EVAL_DIR / "metrics.json").read_text()) == record


# ---------------------------------------------------------------------------------------------
# init_from.


def test_init_from_loads_by_regex_and_names_missing_and_mismatched_keys(straight_run, tmp_path):
    workdir, result = straight_run
    params = _host(result["state"].params)
    assert _saved_params(workdir).keys() == checkpoint.flatten(params).keys()

    target = {"visual": {"proj": np.zeros((32, 16), np.float32),
                         "extra": np.zeros(3, np.float32)},
              "text": {"text_projection": np.zeros((32, 8), np.float32)},
              "logit_scale": np.zeros((), np.float32)}
    merged, step = state_lib.load_params(target, workdir, include=r"^visual/proj$|^logit_scale$")
    assert step == 4
    np.testing.assert_array_equal(merged["visual"]["proj"], params["visual"]["proj"])
    np.testing.assert_array_equal(merged["visual"]["extra"], 0)
    with pytest.raises(checkpoint.CheckpointError) as error:
        state_lib.load_params(target, workdir)
    message = str(error.value)
    assert "missing keys (1): visual/extra" in message
    assert "text/text_projection: model (32, 8), checkpoint (32, 16)" in message
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    loaded, _ = state_lib.load_params(abstract, workdir)  # every leaf gets its saved value
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    with pytest.raises(checkpoint.CheckpointError, match="leaves .* parameters without a value"):
        state_lib.load_params(abstract, workdir, include="^visual/")

    converted = tmp_path / "converted"
    checkpoint.save_params(converted, {"visual": {"proj": params["visual"]["proj"]}})
    assert list(_saved_params(converted)) == ["visual/proj"]
    assert state_lib.load_params(None, converted)[1] == -1
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        state_lib.load_params(target, tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# Two processes.

_WORKER = """
import json, os, sys
process_id, port, dataset, out, workdir = sys.argv[1:6]
os.environ.pop("XLA_FLAGS", None)
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id))
import numpy as np
import ml_collections
from tempret_jax import checkpoint, sharding, train
from tempret_jax.data import pipeline
from tempret_jax.state import TrainSetup
from tempret_jax.step import TrainStep

config = ml_collections.ConfigDict(json.loads(open(sys.argv[6]).read()))
trainer = TrainStep(TrainSetup(config, sharding.make_mesh()))
batch = next(iter(pipeline.train_pipeline(dataset, 8, num_frames=4, resolution=32,
                                          process_index=0, process_count=1)))
rows = slice(4 * jax.process_index(), 4 * jax.process_index() + 4)  # this process's half
state = trainer.setup.init_state()
_, _, grads = trainer.gradients(state, {k: v[rows] for k, v in batch.items()})
losses = []
for _ in range(2):
    state, metrics = trainer(state, {k: v[rows] for k, v in batch.items()})
    losses.append(float(metrics["loss"]))
grads = jax.tree.map(np.asarray, grads)  # replicated over the data axis
if jax.process_index() == 0:
    np.savez(out, losses=np.asarray(losses),
             **{k: v for k, v in checkpoint.flatten(grads).items()})
# The whole loop too: pipeline shards, checkpoint, evaluation.
result = train.train_and_evaluate(config, workdir)
print("RESULT", jax.process_index(), result["step"], json.dumps(result["metrics"]), flush=True)
"""


@pytest.mark.slow  # ~100 s on 2 cores: two JAX processes compile, gloo collectives are slow
def test_two_processes_train_like_one(dataset, fixed_batch, tmp_path):
    config = tiny_config(dataset, total_steps=2)
    config.eval.every_steps = 0  # evaluate at the end
    (tmp_path / "config.json").write_text(config.to_json())
    (tmp_path / "worker.py").write_text(_WORKER)
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, str(tmp_path / "worker.py"), str(i), str(port), dataset,
         str(tmp_path / "two.npz"), str(tmp_path / "run"), str(tmp_path / "config.json")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [line.split(maxsplit=3) for out, _ in outputs for line in out.splitlines()
               if line.startswith("RESULT")]
    assert sorted(r[1] for r in results) == ["0", "1"] and {r[2] for r in results} == {"2"}
    assert results[0][3] == results[1][3] and "mAP" in results[0][3]
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()

    reference = _trainer(config, sharding.make_mesh())  # 8 devices, one process
    _, _, grads = reference.gradients(reference.setup.init_state(), fixed_batch)
    _, history = _run_steps(reference, fixed_batch, 2)
    two = np.load(tmp_path / "two.npz")
    np.testing.assert_allclose(two["losses"], [h["loss"] for h in history], rtol=1e-5)
    one = checkpoint.flatten(_host(grads))
    scale = max(np.abs(g).max() for g in one.values())  # see the FSDP test for why
    for k, v in one.items():
        np.testing.assert_allclose(two[k], v, rtol=1e-3, atol=1e-6 * scale, err_msg=k)
