"""TempRet (EK-100 MIR challenge 2026) on AVION's ViT-L/14: the report's result, expect 67.97
avg mAP / 82.92 avg nDCG after stage 2's rerank. Arg: stage1 (default) | stage2.

The report (an abstract) gives the design (temporal transformer with learned positions over
frame-level CLIP features; SMS; top-K reranked by an ITM cross-encoder) but no training values:
they are the SMS ViT-L setup (configs/ek100_sms_vitl14.py). Every value and its source:
docs/recipes.md (`recipes.TEMPRET_L14`). See configs/ek100_tempret_vitb16.py for the commands.
"""

from tempret_jax import recipes


def get_config(arg=None):
    return recipes.tempret("ek100_tempret_vitl14", arg)
