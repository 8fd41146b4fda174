"""EVA02-AT-L (Wang et al. 2025) on EVA02-CLIP-L/14: width 1024, 24 layers, 16 heads, SwiGLU
hidden 2730, RoPE grid 16 = its 16 x 16 patches, remat and bf16; the paper's 63.5 avg mAP /
74.2 avg nDCG model. See configs/ek100_eva02at_b.py for the design and the command.
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    return recipes.eva02at("eva02_l14", "ek100_eva02at_l")
