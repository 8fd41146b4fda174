"""SMS loss (EVA02-AT) on AVION's ViT-L/14 (16 x 16 x 16 + 1 tokens, remat, bf16).

    python -m tempret_jax.main --config configs/ek100_sms_vitl14.py --workdir runs/sms_l \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_CLIP
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    c = recipes.ek100_finetune("vit_l14", "ek100_sms_vitl14")
    recipes.use_sms(c)
    return c
