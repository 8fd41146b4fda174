"""SMS loss (EVA02-AT) on AVION's ViT-L/14 (16 x 16 x 16 + 1 tokens, remat, bf16); see
configs/ek100_sms_vitb16.py for the command.
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    return recipes.ek100_sms("avion_l14", "ek100_sms_vitl14")
