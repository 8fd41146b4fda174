"""TempRet (2026) on CLIP ViT-L/14 (the headline 67.97 avg mAP / 82.92 avg nDCG model).
Arg: stage1 (default) | stage2; see configs/ek100_tempret_vitb16.py for the commands.
"""

from tempret_jax import recipes


def get_config(arg=None):
    return recipes.tempret("avion_l14", "ek100_tempret_vitl14", arg)
