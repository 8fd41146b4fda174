"""EVA02-AT-B (Wang et al. 2025) EK-100 MIR fine-tuning: EVA02 video tower with joint space-time
attention, learned spatial + temporal embeddings and spatial-temporal RoPE, SMS loss.

The model is EVA02-CLIP-B/16 as EVA-CLIP's code defines it (preset 'eva02_b16': SwiGLU with
sub-LayerNorms, q/v biases, patch bias, no ln_pre, eps 1e-6, 2D RoPE positions on the
16-patch pretraining grid, GELU text tower) with EVA02-AT's video additions (the authors'
avion/models/eva.py, committed as bytecode to SMS-Loss): a temporal embedding and a 1D
temporal RoPE over the whole head dimension composed with the spatial one ('learned+rope'),
and the 256-d embedding space of the paper's implementation details. SMS with gamma 0.6,
tau 0.1, eps 1.1/240. Start from an EVA02-AT Ego4D-pretrained checkpoint (4 frames, inflated
to 16 on load) or an EVA02-CLIP-B/16 one converted with tools/convert_checkpoint.py; an
EVA02-CLIP image checkpoint has a 512-d head, so add --config.init_from.architecture=checkpoint
to fine-tune from it directly.

    python -m tempret_jax.main --config configs/ek100_eva02at_b.py --workdir runs/eva02at_b \
      --config.dataset_dir=DATA --config.init_from.path=CONVERTED_EVA02AT
"""

from tempret_jax import recipes


def get_config(arg=None):
    del arg
    return recipes.eva02at("eva02_b16", "ek100_eva02at_b")
