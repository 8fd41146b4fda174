"""ContextRefine-CLIP (2025) on ViT-L/14: cross-modal context refinement + SMS + TTA.

Pooled video and text features attend to each other's gallery (the global batch in training,
the whole test gallery at inference) through cross-attention with residual + LayerNorm and a
gated FFN + residual + LayerNorm, before the projection heads; evaluation averages the original,
horizontally flipped and 0.875 / 1.125-scaled views (test-time augmentation). Paper: 66.8 avg
mAP / 82.1 avg nDCG.

    python -m tempret_jax.main --config configs/ek100_crclip_vitl14.py --workdir runs/crclip_l \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_AVION
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    c = recipes.ek100_finetune("avion_l14", "ek100_crclip_vitl14")
    c.model.refine.enabled = True
    recipes.use_sms(c)
    c.eval.tta = True  # flip + multi-scale, features averaged
    c.init_from.include = r"^(visual|text|logit_scale)/"  # refinement heads start fresh
    return c
