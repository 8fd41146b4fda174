"""Each paper's published Ego4D pretraining (EgoClip) and Charades-Ego fine-tuning setups.

The same `recipes.Setup` form as the EK-100 recipes (every value with its source, the setup in
the config's ``recipe`` block), built by `recipes.build` and then pointed at these data:

  EgoClip pretraining    EVA02-AT-B / -L (InfoNCE at a fixed temperature 0.05, 4 frames, AdamW
                         at a fixed lr of 3e-5, 5 epochs, batch 1024 / 512) and EgoVLP (EgoNCE,
                         4 frames, Adam 3e-5, 10 epochs, batch 512). Each evaluates EgoMCQ
                         every epoch and keeps its best checkpoint by intra-video accuracy
                         ('egomcq_intra'), as both papers choose the checkpoint they fine-tune.
  Charades-Ego           EVA02-AT's fine-tune: SMS on hard labels (Eq. 17, gamma 0.3), Lamb,
                         10 epochs, warmup 1e-6 -> 3e-5 over the first epoch, 16 frames; scored
                         by video-to-text mAP over the 157 classes ('charades_ego_mAP').

An epoch of EgoClip is its 3,847,723 clips (EgoVLP README); Charades-Ego's training segments
are counted from the prepared split at start-up (``epochs``: `tempret_jax.epochs`). The data
sets come from tools/prepare.py --corpus ego4d / charades_ego; EgoMCQ is the Ego4D data set's
test split, given as --config.eval.egomcq_dir when the training set is another folder.
"""

from __future__ import annotations

import ml_collections

from tempret_jax import recipes
from tempret_jax.recipes import EVA02AT, Value

EGOCLIP_CLIPS = 3_847_723  # showlab/EgoVLP README.md, "Num of clips for EgoClip"
EVA02AT_PT = "EVA02-AT paper, Sec. V, Ego4D pretraining"
EVA02AT_CH = "EVA02-AT paper, Sec. V, Charades-Ego fine-tuning"
EGOVLP_PT = "EgoVLP EK-100 report, Sec. 3.1 (pretraining)"
EGOVLP_CFG = "EgoVLP configs/pt/egoclip.json"
AVION_PT = "AVION scripts/main_lavila_pretrain.py"  # EVA02-AT builds on AVION's code
# What the fresh towers start from: every pretraining here starts from image-text (EVA02-CLIP)
# or image (ViT) + text (DistilBERT) towers; the temperature is the recipe's own.
TOWERS = r"^(visual|text)(/|$)"
_EGOMCQ = dict(tta=Value((), "EgoVLP trainer/trainer_egoclip.py: EgoMCQ on centre crops"),
               dual_softmax=Value("none", "EgoMCQ scores cosines"),
               rerank_k=Value(0, "no reranking"))

EVA02AT_B_PT = recipes.EVA02AT_B.derive(
    "egoclip_eva02at_b", reproduces="EVA02-AT Table II, EgoMCQ, EVA02-AT-B (EgoClip)",
    expect="EgoMCQ inter 95.0 / intra 63.2 accuracy (EgoClip+ row; Sec. V text)",
    init=Value("EVA02-CLIP-B/16 (image-text)", "EVA02-AT paper, Sec. III: single-stage "
               "transfer of the image CLIP"),
    global_batch=Value(1024, f"{EVA02AT_PT}: 256 per GPU x 4 GPUs"),
    frames=Value(4, EVA02AT_PT), resolution=Value(224, EVA02AT),
    crop_scale=Value((0.5, 1.0), f"{AVION_PT} RandomResizedCrop(scale=(0.5, 1.0))"),
    loss=Value("info_nce", f"{EVA02AT_PT}: bi-directional InfoNCE"),
    loss_hparams=Value({}, f"{EVA02AT_PT}: temperature 0.05 (model.init_temperature, frozen)"),
    lr_start=Value(3e-5, f"{EVA02AT_PT}: fixed learning rate"),
    lr_peak=Value(3e-5, f"{EVA02AT_PT}: fixed learning rate"),
    lr_end=Value(3e-5, f"{EVA02AT_PT}: fixed learning rate"),
    warmup_epochs=Value(0, f"{EVA02AT_PT}: fixed learning rate (AVION's --fix-lr)"),
    epochs=Value(5, EVA02AT_PT),
    weight_decay=Value(0.01, f"{AVION_PT} --wd"), betas=Value((0.9, 0.999), f"{AVION_PT} --betas"),
    adam_eps=Value(1e-8, f"{AVION_PT} --eps"), **_EGOMCQ)
EVA02AT_L_PT = EVA02AT_B_PT.derive(
    "egoclip_eva02at_l", reproduces="EVA02-AT Table II, EgoMCQ, EVA02-AT-L (EgoClip)",
    expect="EgoMCQ accuracy of EVA02-AT-L (Table II)",
    preset=Value("eva02_l14", "EVA02-AT paper, Sec. V: EVA02-CLIP architecture"),
    init=Value("EVA02-CLIP-L/14 (image-text)", "EVA02-AT paper, Sec. III: single-stage "
               "transfer of the image CLIP"),
    global_batch=Value(512, f"{EVA02AT_PT}: 128 per GPU x 4 GPUs"))
EGOVLP_PT_B16 = recipes.EGOVLP_B16.derive(
    "egoclip_egovlp", paper="EgoVLP (Lin et al., NeurIPS 2022; EK-100 report 2022)",
    reproduces="EgoVLP README, EgoVLP_PT_BEST: EgoMCQ 90.7 inter / 57.2 intra",
    expect="EgoMCQ inter 90.7 / intra 57.2 accuracy",
    init=Value("ImageNet-21k ViT-B/16 + distilbert-base-uncased (convert_checkpoint.py "
               "--egovlp_init)",
               f"{EGOVLP_PT}: Frozen's initialisation; EgoVLP model/model.py "
               f"FrozenInTime.__init__: time attention at zeros, random projections"),
    hardware=Value("32 GPUs (1,536 GPU hours)", "EgoVLP EK-100 report, Limitations"),
    global_batch=Value(512, EGOVLP_PT), frames=Value(4, EGOVLP_PT),
    loss=Value("egonce", f"{EGOVLP_PT}, Eq. 1-2; {EGOVLP_CFG} loss EgoNCE"),
    loss_hparams=Value({"temperature": 0.05}, f"{EGOVLP_PT}: tau 0.05"),
    epochs=Value(10, EGOVLP_PT), **_EGOMCQ)
# The released config trains 10 "epochs" of max_samples_per_epoch = 500,000 clips each.
EGOVLP_PT_CODE_SAMPLES = 10 * 500_000

EVA02AT_B_CHARADES = recipes.EVA02AT_B.derive(
    "charades_ego_eva02at_b", reproduces="EVA02-AT Table II, Charades-Ego fine-tuned, EVA02-AT-B",
    expect="Charades-Ego mAP of EVA02-AT-B + SMS (Table II)",
    init=Value("EVA02-AT-B Ego4D-pretrained (a run of egoclip_eva02at_b)", EVA02AT_CH),
    global_batch=Value(256, f"{EVA02AT}: 64 per GPU x 4 GPUs (EK-100's; Charades-Ego's "
                       f"batch is not given)"),
    frames=Value(16, EVA02AT_CH),
    loss=Value("sms_hard", f"{EVA02AT_CH}, Eq. 17"),
    loss_hparams=Value({"margin": 0.3, "tau": 0.1, "eps": 1.1 / 240},
                       f"{EVA02AT_CH}: gamma 0.3; tau: Sec. V (0.1)"),
    optimizer=Value("lamb", EVA02AT_CH),
    lr_start=Value(1e-6, EVA02AT_CH), lr_peak=Value(3e-5, EVA02AT_CH),
    lr_end=Value(3e-6, f"{recipes.SMS_B} --lr-end ratio (0.1 x peak): not given"),
    warmup_epochs=Value(1, EVA02AT_CH), epochs=Value(10, EVA02AT_CH),
    tta=Value((), "EgoVLP run/test_charades.py (centre crop)"),
    dual_softmax=Value("none", "Charades-Ego scores cosines"), rerank_k=Value(0, "no reranking"))
EVA02AT_L_CHARADES = EVA02AT_B_CHARADES.derive(
    "charades_ego_eva02at_l", reproduces="EVA02-AT Table II, Charades-Ego fine-tuned, EVA02-AT-L",
    expect="Charades-Ego mAP of EVA02-AT-L + SMS (Table II)",
    preset=Value("eva02_l14", "EVA02-AT paper, Sec. V: EVA02-CLIP architecture"),
    init=Value("EVA02-AT-L Ego4D-pretrained (a run of egoclip_eva02at_l)", EVA02AT_CH))

SETUPS = {s.name: s for s in (EVA02AT_B_PT, EVA02AT_L_PT, EGOVLP_PT_B16, EVA02AT_B_CHARADES,
                              EVA02AT_L_CHARADES)}


def _pretraining(c: ml_collections.ConfigDict, epoch: int) -> ml_collections.ConfigDict:
    """EgoMCQ every epoch, the best checkpoint by intra-video accuracy, fresh towers."""
    c.evals = ("egomcq",)
    c.checkpoint.update(best_metric="egomcq_intra", every_steps=epoch)
    c.eval.update(every_steps=epoch, split="test")
    c.init_from.include = TOWERS
    return c


def egoclip(name: str, arg=None) -> ml_collections.ConfigDict:
    """An EgoClip pretraining config: name a key of `SETUPS` starting 'egoclip_'. For EgoVLP,
    arg 'code' trains what the released config does: 10 x 500,000 clips (its
    max_samples_per_epoch), not 10 passes over EgoClip (the paper's default)."""
    if not name.startswith("egoclip_") or name not in SETUPS:
        raise ValueError(f"pretraining recipe {name!r}: expected one of "
                         f"{sorted(k for k in SETUPS if k.startswith('egoclip_'))}")
    if arg not in (None, "", "code") or (arg == "code" and name != "egoclip_egovlp"):
        raise ValueError(f"{name}: arg {arg!r}: expected none ('code' is egoclip_egovlp's)")
    setup = SETUPS[name]
    c = recipes.build(setup, clips=EGOCLIP_CLIPS)
    epoch = recipes.steps_per_epoch(c.global_batch_size, EGOCLIP_CLIPS)
    if setup.values["loss"].value == "info_nce":
        c.model.init_temperature = 0.05  # fixed: recipes.build freezes logit_scale
    if arg == "code":
        c.name = f"{name}_code"
        c.total_steps = EGOVLP_PT_CODE_SAMPLES // c.global_batch_size
        epoch = 500_000 // c.global_batch_size
        c.recipe.sources["epochs"] = f"{EGOVLP_CFG}: 10 x max_samples_per_epoch 500000"
    return _pretraining(c, epoch)


def charades_ego(name: str) -> ml_collections.ConfigDict:
    """A Charades-Ego fine-tuning config: name a key of `SETUPS` starting 'charades_ego_'.
    Its steps are resolved from the prepared training split at start-up (``epochs``)."""
    if not name.startswith("charades_ego_") or name not in SETUPS:
        raise ValueError(f"Charades-Ego recipe {name!r}: expected one of "
                         f"{sorted(k for k in SETUPS if k.startswith('charades_ego_'))}")
    setup = SETUPS[name]
    v = {k: x.value for k, x in setup.values.items()}
    c = recipes.build(setup, clips=v["global_batch"])  # one step per epoch until resolved
    c.epochs = float(v["epochs"])
    c.optim.warmup_epochs = float(v["warmup_epochs"])
    c.checkpoint.every_epochs = 1.0
    c.evals = ("charades_ego",)
    c.checkpoint.best_metric = "charades_ego_mAP"
    c.eval.update(every_steps=0, split="test")  # at the end
    c.init_from.include = recipes.PRETRAINED_TOWERS
    c.init_from.best_metric = "egomcq_intra"  # the pretraining run's checkpoint to start from
    return c
