"""A converted checkpoint knows its model: zero-shot evaluation is one command with the data and
checkpoint paths, and a run whose config contradicts the checkpoint's architecture is an error
naming both values (or adopts it, when asked)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tempret_jax import config as config_lib
from tempret_jax import convert, main, search, state, zero_shot
from tempret_jax.models import retrieval
from tiny_run import REPO, make_dataset, tiny_config


def _converted(path, **vision):
    """A converted checkpoint of the tiny model (random weights), vision settings changed."""
    model_config = retrieval.model_config("tiny")
    model_config.vision.update(vision)
    model = retrieval.RetrievalModel.from_config(model_config)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)),
                                 jnp.zeros((1, 77), jnp.int32))["params"]
    convert.save_converted(path, jax.tree.map(np.asarray, params), model_config)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory)


def test_eval_with_a_converted_checkpoint_and_no_config_is_its_zero_shot_config(tmp_path):
    converted = str(_converted(tmp_path / "converted"))
    argv = main._with_run_config(["main", "--mode=eval", f"--checkpoint={converted}",
                                  "--workdir", str(tmp_path / "run")])
    assert argv[1] == f"--config={zero_shot.__file__}:{converted}"
    c = zero_shot.get_config(converted)
    assert c.model.vision.to_dict() == {**convert.read_model_config(converted).vision.to_dict(),
                                        "num_frames": 16}  # the EK-100 recipe's frames
    assert (c.data.resolution, c.init_from.path) == (32, converted)


def test_zero_shot_evaluation_is_one_command(dataset, tmp_path):
    converted = _converted(tmp_path / "converted")
    # The tiny data set holds 4 frames a clip; EK-100's prepared data has the recipe's 16.
    run = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--mode", "eval", "--checkpoint",
         str(converted), "--workdir", str(tmp_path / "zs"), f"--config.dataset_dir={dataset}",
         "--config.data.num_frames=4", "--config.model.vision.num_frames=4",
         "--config.eval.num_workers=0"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "zs" / "eval" / "metrics.json").read_text())
    assert (record["config"], record["step"], record["checkpoint"]) == (
        "ek100_zero_shot", -1, str(converted))
    assert 0 < record["mAP"]["avg"] <= 100


def test_a_contradicting_config_names_both_values(dataset, tmp_path):
    converted = _converted(tmp_path / "converted", ln_eps=1e-6)
    c = tiny_config(dataset)
    c.init_from.path = str(converted)
    with pytest.raises(config_lib.ConfigError, match=r"model\.vision\.ln_eps=1e-05 contradicts "
                       r"the checkpoint .*converted \(model_config\.json: 1e-06\)"):
        state.TrainSetup(c)
    with pytest.raises(config_lib.ConfigError, match="vision.ln_eps=1e-05 contradicts"):
        state.TrainSetup(tiny_config(dataset)).load_eval_params(converted)


def test_the_checkpoints_architecture_can_be_adopted(dataset, tmp_path):
    converted = _converted(tmp_path / "converted", ln_eps=1e-6, mlp="gelu")
    c = tiny_config(dataset)
    c.init_from.update(path=str(converted), architecture="checkpoint")
    convert.adopt_architecture(c.model, converted)
    assert (c.model.vision.ln_eps, c.model.vision.mlp, c.model.vision.num_frames) == (
        1e-6, "gelu", 4)
    setup = state.TrainSetup(c)
    loaded = setup.with_init_from(setup.init_state())
    saved, _ = state.load_params(None, converted)
    np.testing.assert_array_equal(loaded.params["visual"]["proj"], saved["visual"]["proj"])


def test_a_converted_checkpoint_can_be_searched(dataset, tmp_path):
    converted = str(_converted(tmp_path / "converted"))
    c = zero_shot.get_config(converted)
    c.update(dataset_dir=dataset)
    c.data.num_frames = c.model.vision.num_frames = 4
    c.eval.num_workers = 0
    searcher = search.Searcher.open(tmp_path / "zs", c, checkpoint=converted)
    assert searcher.index.meta["checkpoint"] == converted and searcher.index.meta["step"] == -1
    assert len(searcher.search("cut the onion", 3)) == 3



def test_egovlps_released_format_evaluates_zero_shot_with_its_vocabulary(dataset, tmp_path):
    from tempret_jax.data import synthetic
    from tools import convert_checkpoint as cli

    golden = REPO / "tests" / "data" / "golden" / "egovlp" / "egovlp_tiny.pth"
    converted = tmp_path / "egovlp"
    assert cli.main([str(golden), str(converted), "--vision_heads", "4",
                     "--text_heads", "4"]) == 0
    vocab = tmp_path / "vocab.txt"  # the tiny DistilBERT has 64 token embeddings
    vocab.write_text("\n".join(synthetic.wordpiece_vocab()[:64]) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--mode", "eval", "--checkpoint",
         str(converted), "--workdir", str(tmp_path / "zs"), f"--config.dataset_dir={dataset}",
         "--config.data.num_frames=4", "--config.model.vision.num_frames=4",
         "--config.eval.num_workers=0", f"--config.model.text.vocab_file={vocab}"],
        cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "zs" / "eval" / "metrics.json").read_text())
    assert record["step"] == -1 and 0 < record["mAP"]["avg"] <= 100
    without = subprocess.run(
        [sys.executable, "-m", "tempret_jax.main", "--mode", "eval", "--checkpoint",
         str(converted), "--workdir", str(tmp_path / "zs2"), f"--config.dataset_dir={dataset}",
         "--config.data.num_frames=4", "--config.model.vision.num_frames=4",
         "--config.eval.num_workers=0"],
        cwd=REPO, capture_output=True, text=True)
    assert without.returncode != 0  # refused at start, before any clip is read
    assert without.stderr.splitlines()[-1] == (
        "error: config: model.text.vocab_file: expected the path of the WordPiece vocabulary "
        "(distilbert-base-uncased's vocab.txt for EgoVLP's weights); it cannot be downloaded "
        "here")
