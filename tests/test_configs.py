"""Every config loads, validates and builds its model; the demo's variants learn on a fixed batch."""

import importlib.util
import json
import pathlib
import re

import ml_collections
import numpy as np
import pytest

from tempret_jax import config as config_lib
from tempret_jax.models import retrieval
from tempret_jax import state, step
from tempret_jax.data import synthetic

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"
EK100 = sorted(p.name for p in CONFIGS.glob("ek100_*.py"))


def load(name: str, arg=None):
    spec = importlib.util.spec_from_file_location(name[:-3], CONFIGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_every_method_has_its_config():
    assert EK100 == ["ek100_avion_vitb16.py", "ek100_crclip_vitl14.py", "ek100_egovlp.py",
                     "ek100_eva02at_b.py", "ek100_eva02at_l.py", "ek100_sms_vitb16.py",
                     "ek100_sms_vitl14.py", "ek100_tempret_vitb16.py", "ek100_tempret_vitl14.py"]


CLIP_FAMILIES = [n for n in EK100 if n != "ek100_egovlp.py"]  # EgoVLP: test_recipes.py


@pytest.mark.parametrize("name, arg", [(n, None) for n in CLIP_FAMILIES]
                         + [("ek100_tempret_vitb16.py", "stage2")])
def test_ek100_configs_validate_and_follow_their_paper(name, arg):
    c = load(name, arg)
    config_lib.validate(c, num_devices=8, process_count=1)
    assert c.dataset_dir == "" and c.data.num_frames == c.model.vision.num_frames == 16
    assert c.data.resolution == 224 and tuple(c.data.crop_scale) == (0.5, 1.0)
    # Each value against its paper: tests/test_recipes.py.
    assert c.loss.name == ("mi_mm" if "avion" in name else "sms")
    if c.loss.name == "sms":
        assert dict(c.loss.hparams) == {"margin": 0.6, "tau": 0.1, "eps": 1.1 / 240}  # EVA02-AT
    width = {"vitb16": 768, "eva02at_b": 768, "vitl14": 1024, "eva02at_l": 1024}
    assert c.model.vision.width == next(w for k, w in width.items() if k in name)
    assert c.model.vision.frame_mode == ("tempret" in name) == c.model.temporal.enabled
    assert c.model.refine.enabled == ("crclip" in name) == c.eval.tta
    assert c.model.cross_encoder.enabled == (arg == "stage2") == (c.stage == 2)


@pytest.mark.parametrize("name, size", [("ek100_eva02at_b.py", (768, 12, 12, 2048)),
                                        ("ek100_eva02at_l.py", (1024, 24, 16, 2730))])
def test_eva02at_uses_st_rope_and_eva02_blocks(name, size):
    v = load(name).model.vision
    assert (v.pos_embed, v.mlp, v.sub_ln, v.rope_grid) == ("learned+rope", "swiglu", True, 16)
    assert (v.width, v.layers, v.heads, int(v.width * v.mlp_ratio)) == size


def test_a_bad_variant_is_named():
    with pytest.raises(ValueError, match="unknown variant 'jiont'"):
        load("synthetic.py", "jiont,sms")
    with pytest.raises(ValueError, match="arg 'stage3'"):
        load("ek100_tempret_vitl14.py", "stage3")
    with pytest.raises(ValueError, match="arg 'adaptve'"):
        load("ek100_egovlp.py", "adaptve")


def _random_batch(c, rng):
    b, v = c.global_batch_size, c.model.vision
    verbs = rng.integers(0, 3, b)
    nouns = np.zeros((b, 300), bool)
    nouns[np.arange(b), rng.integers(0, 4, b)] = True
    tokens = np.zeros((b, 77), np.int32)
    tokens[:, 0], tokens[:, 1], tokens[:, 2], tokens[:, 3] = 49406, 320 + verbs, 330 + nouns.argmax(1), 49407
    return {"video": rng.standard_normal((b, v.num_frames, v.image_size, v.image_size, 3),
                                         dtype=np.float32),
            "tokens": tokens, "pos_relevance": np.ones(b, np.float32), "clip_verb": verbs,
            "clip_nouns": nouns, "text_verb": verbs, "text_nouns": nouns}


def test_the_reversed_variant_names_synthkitchens_mirrored_verbs():
    c = load("synthetic.py", "joint,sms,reversed")
    keys = [synthetic.VERBS[v].key for pair in c.loss.reversed_negatives for v in pair]
    assert keys == [k for pair in synthetic.MIRRORED_VERBS for k in pair]
    assert c.loss.reversed_weight == c.global_batch_size - 1
    assert load("synthetic.py", "joint,sms").loss.reversed_negatives == ()


@pytest.mark.parametrize("variant", ["tempret,sms", "mean,sms", "joint,sms", "rope,sms",
                                     "joint,sms,reversed", "tempret,sms,reversed"])
def test_demo_variants_learn_a_fixed_batch(variant):
    c = load("synthetic.py", f"{variant},test")
    c.optim.update(lr=2e-3, start_lr=2e-3, warmup_steps=0)
    setup = state.TrainSetup(c)
    train_step = step.TrainStep(setup)
    train_state = setup.init_state()
    batch = _random_batch(c, np.random.default_rng(0))
    losses = []
    for _ in range(8):
        train_state, out = train_step(train_state, batch)
        losses.append(float(out["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses


def test_config_errors_name_the_key_and_the_nearest_valid_one():
    c = load("synthetic.py", "test")
    c.optim.lrr = 1e-3  # a config file may add keys: validation catches the typo
    with pytest.raises(config_lib.ConfigError, match="optim.lrr: no such key; did you mean "
                                                     "'optim.lr'"):
        config_lib.validate(c, num_devices=8)
    saved = load("synthetic.py", "test").to_dict()
    saved["total_steps"] = 1.5  # a config read back from JSON has no types of its own
    with pytest.raises(config_lib.ConfigError, match="total_steps: expected type int"):
        config_lib.validate(ml_collections.ConfigDict(saved), num_devices=8)
    c = load("synthetic.py", "test")
    c.evals = ("ek100_mir", "egomcq_mir")
    with pytest.raises(config_lib.ConfigError, match="evals: expected distinct names from "
                                                     r"\('ek100_mir', 'egomcq', 'charades_ego'\)"):
        config_lib.validate(c, num_devices=8)


@pytest.mark.parametrize("key, value, message", [
    ("checkpoint.keep", 0, "checkpoint.keep: expected >= 1"),
    ("checkpoint.best_metric", "map_avg", "checkpoint.best_metric: expected a scalar of the "
                                          "evaluators ('ek100_mir',)"),
    ("optim.lr", -1e-4, "optim.lr: expected >= 0"),
    ("optim.end_lr", -1e-6, "optim.end_lr: expected >= 0"),
    ("optim.warmup_steps", 5, "optim.warmup_steps: expected 0..total_steps = 4, got 5"),
    ("eval.on_error", "ignore", "eval.on_error: expected one of ('stop', 'continue')"),
])
def test_a_run_that_would_lose_or_misrank_checkpoints_is_refused_at_start(key, value, message):
    c = load("synthetic.py", "test")
    block, name = key.split(".")
    c[block][name] = value
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.validate(c, num_devices=8)


def test_a_saved_config_read_back_from_json_validates():
    c = load("ek100_tempret_vitb16.py", "stage2")
    again = ml_collections.ConfigDict(json.loads(c.to_json_best_effort()))  # tuples -> lists
    config_lib.validate(again, num_devices=8)


@pytest.mark.parametrize("name, preset", [
    ("ek100_avion_vitb16.py", "avion_b16"), ("ek100_sms_vitb16.py", "avion_b16"),
    ("ek100_sms_vitl14.py", "avion_l14"), ("ek100_tempret_vitb16.py", "avion_b16"),
    ("ek100_tempret_vitl14.py", "avion_l14"), ("ek100_crclip_vitl14.py", "avion_l14"),
    ("ek100_eva02at_b.py", "eva02_b16"), ("ek100_eva02at_l.py", "eva02_l14")])
def test_each_config_has_the_architecture_its_paper_starts_from(name, preset):
    # TempRet, CR-CLIP and SMS fine-tune AVION's Ego4D-pretrained dual encoders; EVA02-AT
    # EVA02-CLIP's towers (256-d feature space, paper's implementation details).
    c, arch = load(name), retrieval.model_config(preset)
    for key in retrieval.ARCHITECTURE:
        ours, theirs = c.model, arch
        for part in key.split("."):
            ours, theirs = ours[part], theirs[part]
        assert ours == theirs or (key == "embed_dim" and ours == 256), key
    assert c.model.embed_dim == 256


def test_rerank_tuning_needs_held_out_clips():
    c = load("ek100_tempret_vitb16.py", "stage2")
    c.data.holdout_clips = 0
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            "eval.rerank.alphas: expected () unless data.holdout_clips > 0")):
        config_lib.validate(c, num_devices=8)


@pytest.mark.parametrize("fsdp", [1, 4])
def test_the_egovlp_demo_variant_learns_a_fixed_batch_replicated_or_fsdp_sharded(fsdp):
    c = load("synthetic.py", "egovlp,adaptive_mi_mm,test")
    c.optim.update(lr=2e-3, start_lr=2e-3, warmup_steps=0)
    c.mesh.update(fsdp=fsdp, fsdp_min_size=256)
    c.model.scan_layers = True
    setup = state.TrainSetup(c)
    train_step = step.TrainStep(setup)
    train_state = setup.init_state()
    if fsdp > 1:  # the scanned blocks' big kernels are split over the fsdp axis
        kernel = train_state.params["visual"]["resblocks"]["mlp"]["c_fc"]["kernel"]
        assert "fsdp" in kernel.sharding.spec
    rng = np.random.default_rng(0)
    batch = _random_batch(c, rng)
    tokens = np.zeros((c.global_batch_size, c.model.text.context_length), np.int32)
    tokens[:, 0], tokens[:, 3] = 2, 3  # [CLS] verb noun [SEP] of the SynthKitchens vocabulary
    tokens[:, 1], tokens[:, 2] = 5 + batch["clip_verb"], 20 + batch["clip_nouns"].argmax(1)
    batch["tokens"] = tokens
    losses = []
    for _ in range(8):
        train_state, out = train_step(train_state, batch)
        losses.append(float(out["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses
