"""python -m tempret_jax.doctor: versions, devices, the attention 'auto' takes, and whether the
paths a run needs are usable (exit 1 naming the one that is not)."""

import os
import pathlib

import pytest
from tiny_run import make_dataset

from tempret_jax import doctor, lock


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory)


def test_it_reports_versions_devices_and_attention(capsys):
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    assert "packages: jax " in out and "flax " in out
    assert "backend: cpu, 8 device(s) in 1 process(es)" in out
    assert "attention (model.attention_impl='auto'): einsum" in out


def test_usable_paths_are_described(dataset, tmp_path, capsys):
    assert doctor.main(["--dataset_dir", dataset, "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "data set: ok: " in out and "'train': 8" in out and "annotation copies check" in out
    assert "workdir: ok: " in out and "checkpoint steps none; free" in out
    with lock.WorkdirLock(tmp_path):
        doctor.main(["--workdir", str(tmp_path)])
    assert f"in use by a trainer (pid {os.getpid()} on " in capsys.readouterr().out


def test_a_preparations_output_folder_is_its_data_set(dataset, capsys):
    output = str(pathlib.Path(dataset).parents[2])  # <output>/ek100_mir/<config>/<version>
    assert doctor.main(["--dataset_dir", output]) == 0
    assert f"data set: ok: {dataset}: splits" in capsys.readouterr().out


def test_an_unusable_path_is_named_and_exits_1(tmp_path, capsys):
    assert doctor.main(["--dataset_dir", str(tmp_path), "--checkpoint", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"data set: NOT USABLE: {tmp_path}: no prepared split" in out
    assert "checkpoint: NOT USABLE: " in out
