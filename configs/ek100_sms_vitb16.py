"""SMS loss (EVA02-AT, Wang et al. 2025) on AVION's ViT-B/16: the loss ablation of the SMS paper.

Same model and recipe as configs/ek100_avion_vitb16.py; the loss is SMS with gamma 0.6,
tau 0.1, eps 1.1/240 (docs/design.md, Losses; as the authors' released training code), in-batch
relevance exact from class ids.

    python -m tempret_jax.main --config configs/ek100_sms_vitb16.py --workdir runs/sms_b \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_AVION
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    return recipes.ek100_sms("avion_b16", "ek100_sms_vitb16")
