"""Worker processes end with their parent: a Grain pipeline's workers (and a pool's) do not
outlive a trainer killed with -9."""

import pathlib
import signal
import subprocess
import sys
import time

import pytest
from tiny_run import REPO, make_dataset

_PARENT = """
import os, pathlib, sys, time
from tempret_jax.data import pipeline

def main():
    it = iter(pipeline.train_pipeline(sys.argv[1], 8, num_frames=4, resolution=32,
                                      num_workers=2, process_index=0, process_count=1))
    next(it)
    children = " ".join(t.read_text() for t in pathlib.Path(f"/proc/{os.getpid()}/task").glob("*/children"))
    print("CHILDREN", children, flush=True)
    time.sleep(600)

if __name__ == "__main__":
    main()
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory)


def _alive(pid: int) -> bool:
    stat = pathlib.Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] not in ("Z", "X")


def test_grain_workers_end_when_the_trainer_is_killed(dataset, tmp_path):
    script = tmp_path / "parent.py"  # a file, not -c: spawned workers re-import __main__
    script.write_text(_PARENT)
    proc = subprocess.Popen([sys.executable, str(script), dataset], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    line = ""
    while not line.startswith("CHILDREN"):
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "the parent died before printing its workers"
    workers = [int(p) for p in line.split()[1:]]
    assert len(workers) >= 2 and all(_alive(p) for p in workers)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60  # a liveness bound, not a timing claim
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)]
