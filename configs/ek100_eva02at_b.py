"""EVA02-AT-B (Wang et al. 2025): spatial-temporal RoPE over the whole head dim + SMS loss.

The video tower uses joint space-time attention with EVA02-AT's RoPE on q and k of the patch
tokens (2D spatial on the first/second half of the rotary pairs, 1D temporal on all pairs,
composed) on top of the learned spatial embedding ('learned+rope'), EVA02 blocks (SwiGLU MLP,
sub-LayerNorm), and SMS (gamma 0.6, tau 0.1, eps 1.1/240). Paper: 63.5 / 74.2 is the L model;
this is the B size. Start from a converted EVA02-CLIP-B/16 or CLIP ViT-B/16 checkpoint.

    python -m tempret_jax.main --config configs/ek100_eva02at_b.py --workdir runs/eva02at_b \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_CLIP
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    c = recipes.ek100_finetune("vit_b16", "ek100_eva02at_b")
    c.model.vision.update(pos_embed="learned+rope", mlp="swiglu", sub_ln=True)
    recipes.use_sms(c)
    return c
