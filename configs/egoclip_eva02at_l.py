"""EVA02-AT-L (Wang et al. 2025) Ego4D pretraining on EgoClip: configs/egoclip_eva02at_b.py's
setup on EVA02-CLIP-L/14 towers, global batch 512 (the paper's 128 per GPU x 4 GPUs).
Every value and its source: docs/recipes.md (`pretraining.EVA02AT_L_PT`); the command is
configs/egoclip_eva02at_b.py's with this file.
"""

from tempret_jax import pretraining


def get_config(arg=None):
    del arg
    return pretraining.egoclip("egoclip_eva02at_l")
