"""The tiny training run of the trainer tests: a 3-video SynthKitchens prepared at 4 frames,
the config that trains the tiny model on it, and a runner that trains in a subprocess (to be
killed, signalled or raced)."""

import pathlib
import subprocess
import sys

from tempret_jax import config as config_lib
from tempret_jax.data import prepare, synthetic

TINY = synthetic.SynthConfig(num_train_videos=2, num_test_videos=1, num_participants=2,
                             clips_per_video=4, width=96, height=64, fps=10,
                             clip_seconds=(0.6, 1.0), gap_seconds=(0.2, 0.3), gop=10)
REPO = pathlib.Path(__file__).parent.parent


def make_dataset(tmp_path_factory, synth: synthetic.SynthConfig = TINY, num_frames: int = 4,
                 short_side: int = 36) -> str:
    """Generates and prepares a SynthKitchens (the tiny one by default); returns the data set's
    folder."""
    root = tmp_path_factory.mktemp("synth")
    synthetic.generate(root, synth)
    summary = prepare.prepare(prepare.PrepareConfig(
        annotation_dir=str(root / "annotations"), video_root=str(root),
        output_dir=str(tmp_path_factory.mktemp("prepared")), num_frames=num_frames,
        short_side=short_side, num_workers=1, progress=False))
    return summary["dataset_dir"]


def tiny_config(dataset, **overrides):
    """The training config of these tests: the tiny model, 8 clips a step, constant lr."""
    c = config_lib.default_config()
    c.name = "test"
    c.dataset_dir = dataset
    c.total_steps = 4
    c.optim.update(lr=1e-3, start_lr=1e-3, end_lr=1e-3)
    c.eval.every_steps = -1
    c.checkpoint.every_steps = 2
    c.log_every = 1
    c.update(overrides)
    return c


RUNNER = """
import json, os, pathlib, signal, sys, time
import ml_collections
from tempret_jax import train

config = ml_collections.ConfigDict(json.loads(pathlib.Path(sys.argv[1]).read_text()))
workdir, kill_at, wait_for = pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def hook(step, state):
    print(f"STEP {step}", flush=True)
    if step == kill_at:
        # Die like a lost machine, once the wanted checkpoint is complete on disk.
        deadline = time.time() + 120
        while not (workdir / "checkpoints" / wait_for).is_dir() and time.time() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)

result = train.train_and_evaluate(config, workdir, hooks=[hook])
print("DONE", result["step"], result["preempted"], flush=True)
"""


def start_runner(tmp_path, config, workdir, kill_at=-1, wait_for="none"):
    (tmp_path / "config.json").write_text(config.to_json())
    (tmp_path / "runner.py").write_text(RUNNER)
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "config.json"),
         str(workdir), str(kill_at), wait_for],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
