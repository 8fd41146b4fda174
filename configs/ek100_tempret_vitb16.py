"""TempRet (EK-100 MIR challenge 2026) on AVION's ViT-B/16: a temporal transformer over frame
features, SMS loss; stage 2 trains an ITM cross-encoder and reranks the top-K. Arg: stage1
(default) | stage2.

The report publishes one result (67.97 avg mAP / 82.92 avg nDCG, configs/ek100_tempret_vitl14.py)
and no ViT-B row or training values: this config is the SMS ViT-B setup (configs/ek100_sms_vitb16.py,
57.0 / 69.2 to beat) with TempRet's modules. Every value and its source: docs/recipes.md
(`recipes.TEMPRET_B16`); stage 2's values are ours (`recipes.stage2`).

    python -m tempret_jax.main --config configs/ek100_tempret_vitb16.py --workdir runs/tempret_b \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_AVION
    python -m tempret_jax.main --config configs/ek100_tempret_vitb16.py:stage2 \
      --workdir runs/tempret_b_itm --config.dataset_dir=DATA \
      --config.init_from.path=runs/tempret_b/checkpoints
"""

from tempret_jax import recipes


def get_config(arg=None):
    return recipes.tempret("ek100_tempret_vitb16", arg)
