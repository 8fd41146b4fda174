"""EVA02-AT-B (Wang et al. 2025) Ego4D pretraining on EgoClip: EVA02-CLIP-B/16 towers with EVA02-AT's video additions, InfoNCE at a fixed temperature 0.05, 4 frames, AdamW at a fixed lr of 3e-5, 5 epochs, global batch 1024 (256 x 4 GPUs).

Every value and its source: tempret_jax/pretraining.py (`pretraining.SETUPS`). EgoMCQ is
evaluated every epoch and the best checkpoint kept by intra-video accuracy (egomcq_intra), the
checkpoint both papers fine-tune. Prepare Ego4D once (tools/prepare.py --corpus ego4d: EgoClip
is its train split, EgoMCQ its test split) and start from converted towers:

    python -m tempret_jax.main --config configs/egoclip_eva02at_b.py --workdir runs/egoclip_eva02at_b \
      --config.dataset_dir=EGO4D_DATA --config.init_from.path=CONVERTED
"""

from tempret_jax import pretraining


def get_config(arg=None):
    del arg
    return pretraining.egoclip("egoclip_eva02at_b")
