"""The EgoClip pretraining and Charades-Ego fine-tuning configs are their papers' setups, their
lengths in epochs resolve from the prepared data, and a fine-tune starts from a pretraining's
best checkpoint.

PUBLISHED is written from the papers (../shared/papers: eva02_at_sms.txt Sec. V "Ego4D
pretraining" and "Charades-Ego Fine-tuning"; egovlp_ek100_2022.txt Sec. 3.1) and EgoVLP's
configs/pt/egoclip.json, independently of tempret_jax/pretraining.py.
"""

import importlib.util
import json
import pathlib

import pytest

from tempret_jax import checkpoint, config as config_lib, epochs, main, pretraining
from tempret_jax.data import pipeline
import tiny_run

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"
EGOCLIP = 3_847_723  # EgoVLP README: clips of EgoClip

PUBLISHED = {
    # EVA02-AT: InfoNCE tau 0.05, 4 frames, 256 x 4 GPUs (B) / 128 x 4 (L), 5 epochs, AdamW at a
    # fixed 3e-5; 224 px, 256-d; checkpoint chosen on EgoMCQ.
    "egoclip_eva02at_b": dict(preset="eva02_b16", batch=1024, frames=4, loss="info_nce",
                              temperature=0.05, optimizer="adamw", lr=(3e-5, 3e-5, 3e-5),
                              epochs=5, evals=("egomcq",), best="egomcq_intra"),
    "egoclip_eva02at_l": dict(preset="eva02_l14", batch=512, frames=4, loss="info_nce",
                              temperature=0.05, optimizer="adamw", lr=(3e-5, 3e-5, 3e-5),
                              epochs=5, evals=("egomcq",), best="egomcq_intra"),
    # EgoVLP: EgoNCE tau 0.05, 4 frames, batch 512, Adam 3e-5, 10 epochs.
    "egoclip_egovlp": dict(preset="egovlp_b16", batch=512, frames=4, loss="egonce",
                           temperature=0.05, optimizer="adamw", lr=(3e-5, 3e-5, 3e-5),
                           epochs=10, evals=("egomcq",), best="egomcq_intra"),
}
# EVA02-AT Charades-Ego: SMS Eq. 17 with gamma 0.3, Lamb, 10 epochs, warmup 1e-6 -> 3e-5 over
# the first, 16 frames.
CHARADES = dict(loss="sms_hard", margin=0.3, optimizer="lamb", start_lr=1e-6, lr=3e-5,
                epochs=10.0, warmup_epochs=1.0, frames=16)


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_egoclip_configs_follow_their_paper(name):
    want, c = PUBLISHED[name], load(name)
    config_lib.validate(c, num_devices=8)
    assert c.model.vision.num_frames == c.data.num_frames == want["frames"]
    assert c.global_batch_size == want["batch"] and c.loss.name == want["loss"]
    temperature = (c.model.init_temperature if c.loss.name == "info_nce"
                   else c.loss.hparams["temperature"])
    assert temperature == want["temperature"]
    if c.loss.name == "info_nce":  # fixed: logit_scale frozen and not loaded from the towers
        assert c.optim.freeze == r"^logit_scale$"
        assert c.init_from.include == pretraining.TOWERS
    assert (c.optim.start_lr, c.optim.lr, c.optim.end_lr) == want["lr"]
    assert c.optim.name == want["optimizer"] and c.optim.warmup_steps == 0
    assert c.total_steps == want["epochs"] * (EGOCLIP // want["batch"])
    assert c.evals == want["evals"] and c.checkpoint.best_metric == want["best"]
    assert c.eval.every_steps == c.checkpoint.every_steps == EGOCLIP // want["batch"]
    assert c.data.resolution == 224 and c.model.embed_dim == 256


def test_egovlp_code_variant_trains_ten_times_500k_clips():
    c = load("egoclip_egovlp", "code")
    assert c.total_steps == 10 * 500_000 // 512
    with pytest.raises(ValueError, match="arg 'code'"):
        pretraining.egoclip("egoclip_eva02at_b", "code")


@pytest.mark.parametrize("size", ["b", "l"])
def test_charades_ego_configs_follow_eva02at(size):
    c, w = load(f"charades_ego_eva02at_{size}"), CHARADES
    config_lib.validate(c, num_devices=8)
    assert c.loss.name == w["loss"] and c.loss.hparams["margin"] == w["margin"]
    assert c.optim.name == w["optimizer"]
    assert (c.optim.start_lr, c.optim.lr) == (w["start_lr"], w["lr"])
    assert (c.epochs, c.optim.warmup_epochs) == (w["epochs"], w["warmup_epochs"])
    assert c.data.num_frames == w["frames"]
    assert c.evals == ("charades_ego",) and c.checkpoint.best_metric == "charades_ego_mAP"
    assert c.init_from.best_metric == "egomcq_intra"  # the pretraining's EgoMCQ-best step


def test_epochs_resolve_into_steps_from_the_training_records():
    c = load("charades_ego_eva02at_b")  # 10 epochs, warmup 1, checkpoint every epoch, batch 256
    line = epochs.resolve(c, records=33_000)
    assert (c.total_steps, c.optim.warmup_steps, c.checkpoint.every_steps) == (1280, 128, 128)
    assert line.startswith("epochs: 10 x 128 steps (33000 records")
    c.data.holdout_clips = 32_900
    with pytest.raises(ValueError, match="make no batch of global_batch_size 256"):
        epochs.resolve(c, records=33_000)
    fixed = config_lib.default_config()
    assert epochs.resolve(fixed, records=10) is None and fixed.total_steps == 100


def test_split_records_is_the_prepared_split_size_and_main_resolves_epochs(tmp_path_factory):
    dataset = tiny_run.make_dataset(tmp_path_factory)
    records = len(pipeline.open_split(dataset, "train"))
    assert epochs.split_records(dataset, "train") == records > 0
    with pytest.raises(ValueError, match="no split 'validation'"):
        epochs.split_records(dataset, "validation")
    c = tiny_run.tiny_config(dataset)
    c.update(epochs=2.0, global_batch_size=8)
    c.optim.warmup_epochs = 1.0
    workdir = tmp_path_factory.mktemp("run")
    assert main.run(c, workdir, "train") == 0
    saved = json.loads((workdir / config_lib.CONFIG_FILE).read_text())
    assert saved["total_steps"] == 2 * (records // 8)
    assert saved["optim"]["warmup_steps"] == records // 8
    # A fine-tune from that run may take its architecture (init_from.architecture='checkpoint'),
    # as a fine-tuning recipe names the paper's model, not the run's.
    tune = tiny_run.tiny_config(dataset)
    tune.model.vision.width, tune.model.text.layers = 64, 3
    tune.init_from.update(path=str(workdir / checkpoint.CHECKPOINTS), architecture="checkpoint")
    main._adopt_architecture(tune)
    assert tune.model.vision.width == c.model.vision.width
    assert tune.model.text.layers == c.model.text.layers


def test_best_step_is_the_kept_checkpoint_with_the_highest_score(tmp_path):
    folder = tmp_path / "run" / checkpoint.CHECKPOINTS
    for step in (100, 300, 400):  # 200 was removed by the keep policy
        (folder / str(step)).mkdir(parents=True)
    (folder / checkpoint.SCORES_FILE).write_text(json.dumps({
        "100": {"egomcq_intra": 40.0}, "200": {"egomcq_intra": 90.0},
        "300": {"egomcq_intra": 55.5}, "400": {"egomcq_intra": 51.0}}))
    assert checkpoint.best_step(tmp_path / "run", "egomcq_intra") == 300
    assert checkpoint.best_step(folder, "egomcq_intra") == 300
    with pytest.raises(checkpoint.CheckpointError, match="has a 'mAP_avg' score"):
        checkpoint.best_step(folder, "mAP_avg")
    (folder / checkpoint.SCORES_FILE).unlink()
    with pytest.raises(checkpoint.CheckpointError, match="no evaluation scores"):
        checkpoint.best_step(folder, "egomcq_intra")
