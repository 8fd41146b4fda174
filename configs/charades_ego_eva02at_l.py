"""EVA02-AT-L (Wang et al. 2025) Charades-Ego fine-tuning: configs/charades_ego_eva02at_b.py's
setup on EVA02-AT-L, from a run of configs/egoclip_eva02at_l.py. Every value and its source:
docs/recipes.md (`pretraining.EVA02AT_L_CHARADES`).
"""

from tempret_jax import pretraining


def get_config(arg=None):
    del arg
    return pretraining.charades_ego("charades_ego_eva02at_l")
