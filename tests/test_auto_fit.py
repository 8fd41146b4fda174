"""'auto' for model.remat, microbatches and the mesh split: the cheapest setting whose train step,
compiled ahead of time, fits the devices' memory; printed at start-up and saved in the run's
config; the global batch never changes."""

import json

import jax
import pytest

from tempret_jax import aot, auto_fit, main
from tempret_jax import config as config_lib
from tiny_run import REPO, make_dataset, tiny_config


def auto_config(dataset="unused", keys=("model.remat", "microbatches", "mesh.fsdp"), **kw):
    config = tiny_config(dataset, **kw)
    config_lib.set_auto(config, keys)
    return config


def test_the_command_line_takes_auto_for_the_four_keys_in_either_form():
    # absl would parse 'auto' as the key's int or bool and fail: main takes these out first
    # and sets them on the config it read (tests/test_main.py runs it end to end).
    argv, keys = main._take_auto(
        ["main", "--config.microbatches=auto", "--config.model.remat", "auto",
         "--config.mesh.fsdp=2", "--config.seed", "3", "--config.name=auto", "--mesh.data=auto"])
    assert keys == ["microbatches", "model.remat"]
    assert argv == ["main", "--config.mesh.fsdp=2", "--config.seed", "3", "--config.name=auto",
                    "--mesh.data=auto"]
    with pytest.raises(config_lib.ConfigError, match="'auto' is for model.remat"):
        config_lib.set_auto(tiny_config("unused"), ["seed"])


def test_candidates_go_from_the_fastest_step_to_the_most_frugal():
    settings = auto_fit.candidates(auto_config(global_batch_size=32), num_devices=8)
    assert [(s.remat, s.microbatches, s.fsdp, s.data) for s in settings] == [
        (False, 1, 1, -1), (False, 1, 8, 1), (True, 1, 1, -1), (True, 1, 8, 1),
        (False, 2, 1, -1), (False, 2, 8, 1), (True, 2, 1, -1), (True, 2, 8, 1),
        (False, 4, 1, -1), (False, 4, 8, 1), (True, 4, 1, -1), (True, 4, 8, 1)]  # 32 / 8 / 4 = 1
    fixed = auto_fit.candidates(auto_config(keys=("microbatches",), global_batch_size=16), 8)
    assert [(s.remat, s.microbatches, s.fsdp) for s in fixed] == [(False, 1, 1), (False, 2, 1)]


def test_the_first_setting_that_fits_is_chosen_and_printed():
    peaks = {(False, 1): 30, (True, 1): 20, (False, 2): 12}  # GiB, made up; 6 for the rest
    compiled = []

    def compile_step(config, devices):
        compiled.append((config.model.remat, config.microbatches))
        return aot.StepMemory(temp_bytes=peaks.get(compiled[-1], 6) * aot.GIB)

    config = auto_config(keys=("model.remat", "microbatches"), global_batch_size=32)
    said = []
    chosen = auto_fit.resolve(config, jax.devices(), 16 * aot.GIB, compile_step=compile_step,
                              say=said.append)
    assert compiled == [(False, 1), (True, 1), (False, 2)]  # stops at the first that fits
    assert (chosen.remat, chosen.microbatches) == (False, 2)
    assert (config.model.remat, config.microbatches, config.global_batch_size) == (False, 2, 32)
    assert said == ["auto: model.remat=False microbatches=2 mesh.fsdp=1 mesh.data=-1 "
                    "(peak 12.00 GiB of 16.00 GiB a device, 3 compiled)"]
    with pytest.raises(config_lib.ConfigError, match="no 'auto' setting fits 4.00 GiB"):
        auto_fit.resolve(auto_config(keys=("model.remat", "microbatches"), global_batch_size=32),
                         jax.devices(), 4 * aot.GIB, compile_step=compile_step, say=said.append)


def test_auto_is_accepted_for_its_four_keys_only_and_only_before_resolution():
    config = auto_config(keys=("model.remat", "microbatches", "mesh.fsdp", "mesh.data"))
    config_lib.validate(config, 8, allow_auto=True)
    with pytest.raises(config_lib.ConfigError, match="config: mesh.data: expected type int"):
        config_lib.validate(config, 8)
    other = tiny_config("unused")
    with other.ignore_type():  # what a config file could still write
        other.total_steps = "auto"
    with pytest.raises(config_lib.ConfigError, match="config: total_steps: expected type int"):
        config_lib.validate(other, 8, allow_auto=True)


def test_device_memory_of_a_tpu_comes_from_its_generation_and_a_cpu_has_none():
    assert auto_fit.device_memory(aot.tpu_devices("v5e:2x2")[0]) == aot.TPU_MEMORY["v5e"]
    assert auto_fit.device_memory(jax.devices()[0]) is None


@pytest.mark.slow  # compiles the tiny train step three times on 8 CPU devices
def test_under_a_small_memory_limit_the_chooser_takes_remat_or_microbatches():
    def config():  # 64 px frames: activations weigh more than the tiny model's parameters
        c = auto_config(keys=("model.remat", "microbatches"), global_batch_size=32)
        c.model.vision.image_size = c.data.resolution = 64
        return c

    cheapest = aot.train_step_memory(auto_fit.candidates(config(), 8)[0].config_with(config()),
                                     jax.devices())
    resolved = config()
    chosen = auto_fit.resolve(resolved, jax.devices(), cheapest.peak_bytes - 1)
    assert chosen.remat or chosen.microbatches > 1
    assert aot.train_step_memory(resolved, jax.devices()).peak_bytes < cheapest.peak_bytes


def test_a_run_with_auto_resolves_at_start_up_trains_and_saves_the_choice(
        tmp_path_factory, capsys):
    config = auto_config(make_dataset(tmp_path_factory), total_steps=1, global_batch_size=16)
    workdir = tmp_path_factory.mktemp("run")
    assert main.run(config, workdir, "train") == 0
    out = capsys.readouterr().out
    # On CPU the memory is unknown: the cheapest setting, without compiling candidates.
    assert ("auto: model.remat=False microbatches=1 mesh.fsdp=1 mesh.data=-1 (device memory "
            "unknown: the cheapest, untried)") in out.splitlines()
    saved = json.loads((workdir / config_lib.CONFIG_FILE).read_text())
    assert (saved["model"]["remat"], saved["microbatches"], saved["mesh"]["fsdp"],
            saved["mesh"]["data"], saved["global_batch_size"]) == (False, 1, 1, -1, 16)
    assert json.loads((workdir / "train_metrics.jsonl").read_text().splitlines()[-1])["step"] == 1


def test_fit_check_compiles_the_chosen_setting_once_and_reports_no_fit_as_a_row(
        monkeypatch, capsys):
    from tools import fit_check

    compiled = []
    compile_step = aot.train_step_memory
    monkeypatch.setattr(aot, "train_step_memory", lambda config, devices: compiled.append(
        config.model.remat) or compile_step(config, devices))
    args = ["--config", f"{REPO / 'configs/synthetic.py'}:test", "--target", "v5e:2x2",
            "--step", "train", "--set", "model.remat=auto"]
    assert fit_check.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("auto: model.remat=False microbatches=1")  # the cheapest fits
    assert lines[3].split()[1:3] == ["train", "v5e:2x2"]
    assert compiled == [False]  # its row is the compile that chose it, not a second one
    # Nothing fits a ten-thousandth of a GiB: a row saying so, exit 1, no traceback.
    assert fit_check.main([*args, "--memory_gib", "0.0001"]) == 1
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.split()[1:3] == ["train", "v5e:2x2"] and "no 'auto' setting fits" in row
    assert compiled == [False, False, True]
