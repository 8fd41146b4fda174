"""SMS loss on AVION's ViT-L/14 (EVA02-AT paper: "AVION + SMS", ViT-L).

Reproduces EVA02-AT Table I, row "AVION + SMS", EgoClip+, ViT-L: expect 62.1 avg mAP / 73.0
avg nDCG. SMS-Loss mir_finetune_vitL.sh: 4 GPUs x 60 = 240, lr 1e-6 -> 2e-5 -> 1e-6, 100
epochs; remat and bf16 here. Every value and its source: docs/recipes.md (`recipes.SMS_L14`).
See configs/ek100_sms_vitb16.py for the command.
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    return recipes.ek100("ek100_sms_vitl14")
