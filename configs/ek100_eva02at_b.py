"""EVA02-AT-B (Wang et al. 2025) EK-100 MIR fine-tuning: EVA02 video tower with joint space-time
attention, learned spatial + temporal embeddings and spatial-temporal RoPE, SMS loss.

Reproduces EVA02-AT Table I, row "EVA02-AT + SMS", EgoClip+, ViT-B: expect 59.0 avg mAP / 70.8
avg nDCG. The paper's setup: 16 frames at 224 px, 256-d features, 64 clips x 4 GPUs = 256,
warmup 1e-6 -> 2e-5 over the first epoch, 100 epochs, SMS gamma 0.6, tau 0.1; the final lr
(2e-6) and AdamW's settings are the authors' SMS-Loss code. Every value and its source:
docs/recipes.md (`recipes.EVA02AT_B`).

The model is EVA02-CLIP-B/16 as EVA-CLIP's code defines it (preset 'eva02_b16': SwiGLU with
sub-LayerNorms, q/v biases, patch bias, no ln_pre, eps 1e-6, 2D RoPE positions on the
16-patch pretraining grid, GELU text tower) with EVA02-AT's video additions (the authors'
avion/models/eva.py, committed as bytecode to SMS-Loss): a temporal embedding and a 1D
temporal RoPE over the whole head dimension composed with the spatial one ('learned+rope').
Start from an EVA02-AT Ego4D-pretrained checkpoint (4 frames, inflated to 16 on load) or an
EVA02-CLIP-B/16 one converted with tools/convert_checkpoint.py; an EVA02-CLIP image
checkpoint has a 512-d head, so add --config.init_from.architecture=checkpoint to fine-tune
from it directly.

    python -m tempret_jax.main --config configs/ek100_eva02at_b.py --workdir runs/eva02at_b \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_EVA02AT
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    return recipes.ek100("ek100_eva02at_b")
