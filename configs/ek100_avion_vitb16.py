"""AVION (Zhao & Kraehenbuehl, CVPR 2023) EK-100 MIR fine-tuning, ViT-B/16: the MI-MM baseline.

Reproduces AVION's docs/MODEL_ZOO.md EK-100 MIR row "LLM-aug. ViT-B": expect 52.0 avg mAP /
66.5 avg nDCG. CLIP ViT-B/16 with joint space-time attention over 16 x 14 x 14 + 1 tokens, a
learned temporal embedding (inflated from the checkpoint's 4 frames), 256-d features, MI-MM
with margin 0.2, AVION's documented command (8 GPUs x 64 = global batch 512, lr 1e-6 -> 3e-5
-> 1e-5 over 1 + 99 epochs). Every value and its source: docs/recipes.md (`recipes.AVION_B`).

    python -m tempret_jax.main --config configs/ek100_avion_vitb16.py --workdir runs/avion_b \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_AVION
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    return recipes.ek100("ek100_avion_vitb16")
