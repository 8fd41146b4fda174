"""AVION (Zhao & Krähenbühl, CVPR 2023) EK-100 MIR fine-tuning, ViT-B/16: the MI-MM baseline.

CLIP ViT-B/16 with joint space-time attention over 16 x 14 x 14 + 1 tokens, a learned temporal
embedding (zero-initialised, resampled from the checkpoint's frame count), MI-MM loss with
margin 0.2 (AVION's MaxMarginRankingLoss). Paper: 51.0 avg mAP / 64.2 avg nDCG (ViT-B, from
LaViLa pretraining).

    python -m tempret_jax.main --config configs/ek100_avion_vitb16.py --workdir runs/avion_b \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_AVION
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    c = recipes.ek100_finetune("avion_b16", "ek100_avion_vitb16")
    c.loss.name = "mi_mm"
    c.loss.hparams = {"margin": 0.2}  # AVION
    return c
