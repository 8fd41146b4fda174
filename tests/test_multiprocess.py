"""Several processes train one run, as on a multi-host TPU slice or a multi-node GPU cluster:
two processes on this machine join with `--distributed` (jax.distributed over loopback, CPU
collectives), each feeding its half of the global batch, and the run ends evaluated and
checkpointed like a single-process one."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tiny_run import REPO, make_dataset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory)


def _start(process_id: int, port: int, workdir, dataset) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device a process: the mesh spans the processes
    return subprocess.Popen(
        [sys.executable, "-m", "tempret_jax.main", "--config", "configs/synthetic.py:test",
         "--workdir", str(workdir), f"--config.dataset_dir={dataset}",
         "--config.eval.every_steps=4", "--distributed",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={process_id}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_train_and_evaluate_one_run(dataset, tmp_path):
    port = free_port()
    processes = [_start(i, port, tmp_path / "run", dataset) for i in range(2)]
    outputs = []
    for p in processes:
        try:
            outputs.append(p.communicate(timeout=600)[0])
        finally:
            p.kill()
    for i, (p, out) in enumerate(zip(processes, outputs)):
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
    assert "devices: 2 x cpu (cpu), 2 process(es)" in outputs[0]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["step"] == 4 and 0 < record["mAP"]["avg"] <= 100
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "run" / "train_metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # written once, by process 0
    assert (tmp_path / "run" / "checkpoints" / "4").is_dir()


def test_distributed_settings_without_distributed_are_refused(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--config", "configs/synthetic.py:test",
         "--workdir", str(tmp_path), "--num_processes=2"],
        cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2
    assert "--num_processes needs --distributed" in run.stderr
