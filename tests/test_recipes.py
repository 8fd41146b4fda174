"""Each EK-100 config is its paper's published setup, and docs/recipes.md says so.

PUBLISHED is written from the papers and the authors' released scripts (../shared/papers;
AVION docs/MODEL_ZOO.md and scripts/main_lavila_finetune_mir.py, SMS-Loss mir_finetune_vit*.sh),
independently of tempret_jax/recipes.py: a config that drifts from its paper fails here.
"""

import math
import re

import ml_collections
import numpy as np

import pytest

from tempret_jax import config as config_lib
from tempret_jax import recipes
from tools import recipes_table

SMS = {"margin": 0.6, "tau": 0.1, "eps": 1.1 / 240}
ADAMW = {"optimizer": "adamw", "betas": (0.9, 0.999), "adam_eps": 1e-8, "weight_decay": 0.01,
         "lr_start": 1e-6, "warmup_epochs": 1, "frames": 16, "resolution": 224,
         "crop_scale": (0.5, 1.0), "embed_dim": 256, "precision": "bfloat16"}
CENTRE = {"tta": "centre crop", "dual_softmax": "none", "rerank_k": 0}
PUBLISHED = {
    # AVION MODEL_ZOO command: 8 GPUs x 64; script defaults; MaxMarginRankingLoss(margin=0.2).
    "ek100_avion_vitb16": dict(ADAMW, **CENTRE, preset="avion_b16", global_batch=512,
                               loss="mi_mm", loss_hparams={"margin": 0.2}, lr_peak=3e-5,
                               lr_end=1e-5, epochs=100),
    # SMS-Loss mir_finetune_vitb.sh: 4 x 64, lr 2e-5, end 2e-6; EVA02-AT paper: gamma 0.6, tau 0.1.
    "ek100_sms_vitb16": dict(ADAMW, **CENTRE, preset="avion_b16", global_batch=256, loss="sms",
                             loss_hparams=SMS, lr_peak=2e-5, lr_end=2e-6, epochs=100),
    # SMS-Loss mir_finetune_vitL.sh: 4 x 60, lr 2e-5, end 1e-6.
    "ek100_sms_vitl14": dict(ADAMW, **CENTRE, preset="avion_l14", global_batch=240, loss="sms",
                             loss_hparams=SMS, lr_peak=2e-5, lr_end=1e-6, epochs=100),
    # EVA02-AT Sec. V: 64 per GPU x 4, warmup 1e-6 -> 2e-5 over one epoch, 100 epochs, 256-d.
    "ek100_eva02at_b": dict(ADAMW, **CENTRE, preset="eva02_b16", global_batch=256, loss="sms",
                            loss_hparams=SMS, lr_peak=2e-5, lr_end=2e-6, epochs=100),
    "ek100_eva02at_l": dict(ADAMW, **CENTRE, preset="eva02_l14", global_batch=256, loss="sms",
                            loss_hparams=SMS, lr_peak=2e-5, lr_end=1e-6, epochs=100),
    # CR-CLIP Sec. 3.1: ViT-L, 40 x 4 = 160, lr 1.8e-5, the SMS setup; Sec. 2.4: the views.
    "ek100_crclip_vitl14": dict(ADAMW, preset="avion_l14", global_batch=160, loss="sms",
                                loss_hparams=SMS, lr_peak=1.8e-5, lr_end=1e-6, epochs=100,
                                tta=("orig", "flip", "scale=0.875", "scale=1.0", "scale=1.125"),
                                dual_softmax="none", rerank_k=0),
    # TempRet publishes no values: the SMS setups of its backbone.
    "ek100_tempret_vitb16": dict(ADAMW, **CENTRE, preset="avion_b16", global_batch=256,
                                 loss="sms", loss_hparams=SMS, lr_peak=2e-5, lr_end=2e-6,
                                 epochs=100),
    "ek100_tempret_vitl14": dict(ADAMW, **CENTRE, preset="avion_l14", global_batch=240,
                                 loss="sms", loss_hparams=SMS, lr_peak=2e-5, lr_end=1e-6,
                                 epochs=100),
    # EgoVLP report Sec. 3.1: Adam at 3e-5, batch 512, 224 px, 256-d, 100 epochs, 16 frames;
    # Table 2's best row: adaptive MI-MM with gamma 0.4 and dual-softmax.
    "ek100_egovlp": dict(preset="egovlp_b16", global_batch=512, frames=16, resolution=224,
                         embed_dim=256, loss="adaptive_mi_mm", loss_hparams={"margin": 0.4},
                         optimizer="adamw", weight_decay=0.0, lr_start=3e-5, lr_peak=3e-5,
                         lr_end=3e-5, warmup_epochs=0, epochs=100, tta="centre crop",
                         dual_softmax="egovlp", rerank_k=0),
}
ROWS = dict(recipes_table.rows())


def test_docs_recipes_md_is_generated_from_the_configs():
    assert recipes_table.main(["--check"]) == 0


def test_every_ek100_config_has_a_published_setup():
    assert {label.split(":")[0] for label in ROWS if label.startswith("ek100_")} == set(PUBLISHED)


@pytest.mark.parametrize("label", sorted(PUBLISHED))
def test_the_config_equals_the_published_values_cell_by_cell(label):
    c = ROWS[label]
    for name, expected in PUBLISHED[label].items():
        got = recipes_table.value(c, name)
        if isinstance(expected, float):
            assert math.isclose(got, expected, rel_tol=1e-12), (name, got, expected)
        else:
            assert got == expected, (name, got, expected)


@pytest.mark.parametrize("label", sorted(ROWS))
def test_every_value_names_its_source_and_the_config_validates(label):
    c = ROWS[label]
    assert set(c.recipe.sources) == set(recipes.COLUMNS)
    assert all(len(s) > 10 for s in c.recipe.sources.values())
    assert c.recipe.expect and c.recipe.reproduces
    config_lib.validate(c, num_devices=8)


def test_the_global_batch_is_the_authors_whatever_the_devices():
    c = ROWS["ek100_crclip_vitl14"]
    for devices in (1, 4, 8):
        config_lib.validate(c, num_devices=devices)
        assert c.global_batch_size == 160  # kept; microbatches split the towers' work instead


def test_epochs_become_steps_over_the_training_clips():
    c = ROWS["ek100_eva02at_b"]
    epoch = 67_217 // 256
    assert (c.total_steps, c.optim.warmup_steps, c.eval.every_steps) == (100 * epoch, epoch,
                                                                         5 * epoch)
    assert c.checkpoint.every_steps == epoch


@pytest.mark.parametrize("label", ["ek100_tempret_vitb16:stage2", "ek100_tempret_vitl14:stage2"])
def test_stage2_reranks_with_k_and_alpha_tuned_on_held_out_clips(label):
    c = ROWS[label]
    assert c.stage == 2 and recipes_table.value(c, "epochs") == 10
    assert c.recipe.sources["lr_peak"].startswith("ours")
    assert c.eval.rerank.k > 0 and len(c.eval.rerank.ks) > 1 and len(c.eval.rerank.alphas) > 1
    assert c.data.holdout_clips > 0  # the cross-encoder never trains on them
    assert c.model.cross_encoder.enabled and c.model.cross_encoder.video_tokens == "frame"


def test_a_setup_missing_a_value_is_refused():
    values = dict(recipes.AVION_B.values)
    del values["lr_peak"]
    with pytest.raises(ValueError, match=r"recipe x: missing \['lr_peak'\]"):
        recipes.Setup("x", "p", "r", "e", values)


def test_egovlps_mi_mm_row_and_its_released_codes_run_are_named_variants():
    mi_mm, code = ROWS["ek100_egovlp:mi_mm"], ROWS["ek100_egovlp:code"]
    assert (mi_mm.loss.name, dict(mi_mm.loss.hparams), mi_mm.eval.dual_softmax) == (
        "mi_mm", {"margin": 0.2}, "none")
    assert (code.loss.name, code.global_batch_size, code.optim.weight_decay) == ("mi_mm", 32, 0)
    epoch = 67_217 // 32
    assert code.optim.lr_steps == ((0, 3e-5), (epoch, 2e-4), (60 * epoch, 2e-5),
                                   (80 * epoch, 2e-6))
    assert ROWS["ek100_egovlp"].optim.lr_steps == ()  # the report's single lr


def test_the_egovlp_config_starts_from_egovlps_towers():
    c = ROWS["ek100_egovlp"]
    assert (c.model.vision.tower, c.model.text.tower, c.model.vision.temporal_fix) == (
        "space_time", "distilbert", "zeros")
    assert c.model.vision.num_frames == 16 and c.model.embed_dim == 256


def test_the_released_codes_lr_changes_at_its_epochs():
    from tempret_jax import optim

    code = ROWS["ek100_egovlp:code"]
    epoch = 67_217 // 32
    lr = optim.learning_rate_schedule(code.optim, code.total_steps)
    got = [float(lr(s)) for s in (0, epoch - 1, epoch, 60 * epoch - 1, 60 * epoch, 80 * epoch,
                                  code.total_steps - 1)]
    np.testing.assert_allclose(got, [3e-5, 3e-5, 2e-4, 2e-4, 2e-5, 2e-6, 2e-6], rtol=1e-6)


def test_unordered_lr_steps_are_refused():
    c = ROWS["ek100_egovlp:code"].copy_and_resolve_references()
    c.optim.lr_steps = ((0, 1e-4), (10, 1e-5), (5, 1e-6))
    with pytest.raises(config_lib.ConfigError, match="optim.lr_steps"):
        config_lib.validate(c, num_devices=8)


def test_the_egovlp_b16_model_has_egovlps_parameter_count():
    import jax
    import jax.numpy as jnp

    from tempret_jax.models import retrieval

    c = ROWS["ek100_egovlp"].model
    model = retrieval.RetrievalModel.from_config(c)
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 16, 224, 224, 3), jnp.float32),
                            jax.ShapeDtypeStruct((1, 77), jnp.int32))["params"]
    # tests/data/golden/egovlp/layout_b16.json: 180,934,400, plus our fixed logit scale.
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 180_934_401


@pytest.mark.parametrize("label", sorted(PUBLISHED))
def test_a_fine_tune_loads_from_its_converted_checkpoint_exactly_the_towers_it_holds(label):
    """A converted checkpoint holds the towers and logit_scale; every other module of the
    method (temporal transformer, refinement, heads) starts fresh (stage 1 configs)."""
    import jax
    import jax.numpy as jnp

    from tempret_jax import sharding
    from tempret_jax.models import retrieval

    c = ROWS[label]
    model = c.model.to_dict()
    tiny = retrieval.model_config("egovlp_tiny" if label == "ek100_egovlp" else "tiny")
    model.update(vision=tiny.vision.to_dict(), text=tiny.text.to_dict())  # switches kept
    net = retrieval.RetrievalModel.from_config(ml_collections.ConfigDict(model))
    shapes = jax.eval_shape(net.init, jax.random.key(0),
                            jnp.zeros((1, tiny.vision.num_frames, tiny.vision.image_size,
                                       tiny.vision.image_size, 3)),
                            jnp.zeros((1, tiny.text.context_length), jnp.int32))["params"]
    paths = [sharding.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]]
    include = re.compile(c.init_from.include)
    loaded = {p.split("/")[0] for p in paths if include.search(p)}
    assert loaded == {"visual", "text", "logit_scale"}, (label, loaded)
