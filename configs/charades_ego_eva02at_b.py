"""EVA02-AT-B (Wang et al. 2025) Charades-Ego fine-tuning: SMS on hard labels (Eq. 17,
gamma 0.3), Lamb, 10 epochs with a warmup 1e-6 -> 3e-5 over the first, 16 frames; scored by
video-to-text mAP over the 157 classes (charades_ego_mAP) at the end.

Every value and its source: tempret_jax/pretraining.py (`pretraining.SETUPS`); the steps of
an epoch are counted from the prepared training split at start-up. Prepare Charades-Ego
(tools/prepare.py --corpus charades_ego) and start from an EgoClip pretraining run of
configs/egoclip_eva02at_b.py, its best checkpoint by EgoMCQ intra-video accuracy
(init_from.best_metric):

    python -m tempret_jax.main --config configs/charades_ego_eva02at_b.py \
      --workdir runs/charades_ego_eva02at_b --config.dataset_dir=CHARADES_DATA \
      --config.init_from.path=runs/egoclip_eva02at_b
"""

from tempret_jax import pretraining


def get_config(arg=None):
    del arg
    return pretraining.charades_ego("charades_ego_eva02at_b")
