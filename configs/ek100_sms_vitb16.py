"""SMS loss on AVION's ViT-B/16 (EVA02-AT paper, Wang et al. 2025: "AVION + SMS").

Reproduces EVA02-AT Table I, row "AVION + SMS", EgoClip+, ViT-B: expect 57.0 avg mAP / 69.2
avg nDCG. AVION's model; SMS with gamma 0.6, tau 0.1 (the paper); the authors' released
command (SMS-Loss mir_finetune_vitb.sh: 4 GPUs x 64 = 256, lr 1e-6 -> 2e-5 -> 2e-6, 100
epochs). Every value and its source: docs/recipes.md (`recipes.SMS_B16`).

    python -m tempret_jax.main --config configs/ek100_sms_vitb16.py --workdir runs/sms_b \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_AVION
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    return recipes.ek100("ek100_sms_vitb16")
