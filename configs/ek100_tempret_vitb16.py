"""TempRet (2026) on CLIP ViT-B/16: temporal transformer over frame features + SMS; stage 2
reranks with an ITM cross-encoder. Arg: stage1 (default) | stage2.

    python -m tempret_jax.main --config configs/ek100_tempret_vitb16.py --workdir runs/tempret_b \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_AVION
    python -m tempret_jax.main --config configs/ek100_tempret_vitb16.py:stage2 \
      --workdir runs/tempret_b_itm --config.dataset_dir=DATA \
      --config.init_from.path=runs/tempret_b/checkpoints
"""

from tempret_jax import recipes


def get_config(arg=None):
    return recipes.tempret("avion_b16", "ek100_tempret_vitb16", arg)
