"""EgoVLP (Lin et al. 2022) Ego4D pretraining on EgoClip: Frozen-in-Time (ViT-B/16 with
divided space-time attention, DistilBERT), EgoNCE at temperature 0.05, 4 frames, Adam at 3e-5,
10 epochs, global batch 512; EgoMCQ every epoch, the best checkpoint by intra-video accuracy.
arg 'code': what the released configs/pt/egoclip.json trains, 10 x 500,000 clips. Every value
and its source: docs/recipes.md (`pretraining.EGOVLP_PT_B16`); the command is
configs/egoclip_eva02at_b.py's with this file (EgoVLP's DistilBERT needs
--config.model.text.vocab_file=VOCAB, distilbert-base-uncased's vocab.txt).
"""

from tempret_jax import pretraining


def get_config(arg=None):
    return pretraining.egoclip("egoclip_egovlp", arg)
