"""EgoVLP (Lin et al. 2022) Ego4D pretraining on EgoClip: Frozen-in-Time (ViT-B/16 with
divided space-time attention, DistilBERT), EgoNCE at temperature 0.05, 4 frames, Adam at 3e-5,
10 epochs, global batch 512; EgoMCQ every epoch, the best checkpoint by intra-video accuracy.
arg 'code': what the released configs/pt/egoclip.json trains, 10 x 500,000 clips. Every value
and its source: docs/recipes.md (`pretraining.EGOVLP_PT_B16`).

It starts where EgoVLP's FrozenInTime.__init__ starts: timm's ImageNet ViT-B/16
('vit_base_patch16_224'; EgoVLP reads jx_vit_base_p16_224-80ecf9dd.pth) and HF
distilbert-base-uncased, the temporal attention at time_init 'zeros', the two projections
random (seeded) as in EgoVLP. Build that once, then train from it (the DistilBERT folder's
vocab.txt is the text tower's vocabulary):

    python tools/convert_checkpoint.py --egovlp_init jx_vit_base_p16_224-80ecf9dd.pth \
      distilbert-base-uncased converted/egovlp_init
    python -m tempret_jax.main --config configs/egoclip_egovlp.py --workdir runs/egoclip_egovlp \
      --config.dataset_dir=EGO4D_DATA --config.init_from.path=converted/egovlp_init \
      --config.model.text.vocab_file=distilbert-base-uncased/vocab.txt
"""

from tempret_jax import pretraining


def get_config(arg=None):
    return pretraining.egoclip("egoclip_egovlp", arg)
