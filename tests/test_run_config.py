"""A run's saved config: paths inside the run saved relative to it (a moved run finds them),
paths outside kept absolute, and the file usable as a --config file."""

import json

import pytest

from tempret_jax import config as config_lib
from tempret_jax import run_config


def _config(run, elsewhere):
    c = config_lib.default_config()
    c.dataset_dir = str(run / "data" / "set")
    c.init_from.path = str(elsewhere / "converted")
    return c


def test_paths_inside_the_run_are_relative_and_found_after_a_move(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "weights"
    run_config.save(_config(run, elsewhere), run / config_lib.CONFIG_FILE, run)
    saved = json.loads((run / config_lib.CONFIG_FILE).read_text())
    assert saved["dataset_dir"] == "data/set"
    assert saved["init_from"]["path"] == str(elsewhere / "converted")
    run.rename(tmp_path / "moved")
    loaded = run_config.load(tmp_path / "moved")
    assert loaded.dataset_dir == str(tmp_path / "moved" / "data" / "set")
    assert loaded.init_from.path == str(elsewhere / "converted")
    config_lib.validate(loaded, num_devices=8)


def test_the_eval_or_search_copy_is_used_when_training_saved_none(tmp_path):
    run_config.save(_config(tmp_path, tmp_path), tmp_path / "eval" / config_lib.CONFIG_FILE,
                    tmp_path)
    assert run_config.get_config(str(tmp_path)).dataset_dir == str(tmp_path / "data" / "set")


def test_a_run_without_a_saved_config_is_named(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=f"{tmp_path} has no saved config"):
        run_config.load(tmp_path)
    with pytest.raises(config_lib.ConfigError, match="needs the run's folder"):
        run_config.get_config("")
